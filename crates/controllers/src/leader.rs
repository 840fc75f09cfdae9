//! Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does: take
//! the Lease when it is free or expired, renew it, and give up leading when renewal fails.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Held leadership: `lost` is cancelled when renewal fails.
pub struct Leadership {
    pub lost: CancellationToken,
    api: Api<Lease>,
    name: String,
    identity: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Stops renewing and frees the Lease so another server takes over at once.
    pub async fn release(self, _client: &kube::Client) {
        self.renewer.abort();
        if let Ok(mut lease) = self.api.get(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn expired(spec: &LeaseSpec) -> bool {
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
    renew.0 + jiff::SignedDuration::from_secs(duration) < jiff::Timestamp::now()
}

/// One attempt to take or keep the Lease; true when we hold it afterwards.
async fn try_acquire(api: &Api<Lease>, ns: &str, name: &str, identity: &str) -> kube::Result<bool> {
    let fresh_spec = |transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: Some(now()),
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                spec: Some(fresh_spec(0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let ours = spec.holder_identity.as_deref() == Some(identity);
            let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
            if !ours && !free && !expired(&spec) {
                return Ok(false);
            }
            lease.spec = Some(if ours {
                LeaseSpec {
                    renew_time: Some(now()),
                    ..spec
                }
            } else {
                fresh_spec(spec.lease_transitions.unwrap_or(0) + 1)
            });
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this identity holds the Lease (`None` if `shutdown` came first), then keeps
/// renewing it in the background.
pub async fn acquire(
    client: &kube::Client,
    ns: &str,
    name: &str,
    identity: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Leadership>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    loop {
        match try_acquire(&api, ns, name, identity).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!("leader election for {ns}/{name} failed: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
    tracing::info!("became leader of {ns}/{name} as {identity}");
    let lost = shutdown.child_token();
    let renewer = {
        let (api, ns, name, identity, lost) = (
            api.clone(),
            ns.to_string(),
            name.to_string(),
            identity.to_string(),
            lost.clone(),
        );
        tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = lost.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_PERIOD) => {}
                }
                match try_acquire(&api, &ns, &name, &identity).await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        lost.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("renewing {ns}/{name} failed: {e}");
                        if last_ok.elapsed() > RENEW_DEADLINE {
                            lost.cancel();
                            return;
                        }
                    }
                }
            }
        })
    };
    Ok(Some(Leadership {
        lost,
        api,
        name: name.to_string(),
        identity: identity.to_string(),
        renewer,
    }))
}
