//! Leader election on a coordination.k8s.io Lease, client-go style: take the Lease when free
//! or expired, renew it every 2s, and stop leading when renewals keep failing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn expired(spec: &LeaseSpec) -> bool {
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
    renew.0 + jiff::SignedDuration::from_secs(secs) < jiff::Timestamp::now()
}

/// One attempt to take or renew; true when `identity` holds the Lease afterwards.
async fn try_acquire(api: &Api<Lease>, ns: &str, name: &str, identity: &str) -> kube::Result<bool> {
    let fresh = |transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: Some(now()),
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let result = match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                spec: Some(fresh(0)),
            };
            api.create(&PostParams::default(), &lease).await
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
                fresh(spec.lease_transitions.unwrap_or(0) + 1)
            });
            // The resourceVersion in `lease` makes this a compare-and-swap.
            api.replace(name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Held leadership; `lost` is cancelled when renewing fails for longer than the deadline.
pub struct Leadership {
    pub lost: CancellationToken,
    api: Api<Lease>,
    name: String,
    identity: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Stops renewing and frees the Lease so a successor need not wait for it to expire.
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(mut lease) = self.api.get(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                if let Err(e) = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    tracing::debug!("releasing lease {}: {e}", self.name);
                }
            }
        }
    }
}

/// Waits until `identity` holds the Lease (`None` if `shutdown` comes first), then renews it
/// in the background.
pub async fn acquire(
    client: &kube::Client,
    ns: &str,
    name: &str,
    identity: &str,
    shutdown: &CancellationToken,
) -> Option<Leadership> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    loop {
        match try_acquire(&api, ns, name, identity).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!("acquiring lease {ns}/{name}: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
    tracing::info!("{identity} became leader of {ns}/{name}");
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
                        tracing::warn!("lost lease {ns}/{name} to another holder");
                        lost.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("renewing lease {ns}/{name}: {e}");
                        if last_ok.elapsed() > RENEW_DEADLINE {
                            lost.cancel();
                            return;
                        }
                    }
                }
            }
        })
    };
    Some(Leadership {
        lost,
        api,
        name: name.to_string(),
        identity: identity.to_string(),
        renewer,
    })
}
