//! ServiceAccount controller (upstream pkg/controller/serviceaccount): makes sure every active
//! namespace has a `default` ServiceAccount, recreating it when deleted.

use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::Context;
use crate::endpoints::{is_namespace_terminating, kit};

/// The ServiceAccounts every namespace gets (upstream `DefaultServiceAccountsControllerOptions`).
pub const SERVICE_ACCOUNTS: &[&str] = &["default"];

/// Whether the namespace should get ServiceAccounts: it exists and is not being deleted.
fn namespace_active(ns: &Namespace) -> bool {
    let phase = ns.status.as_ref().and_then(|s| s.phase.as_deref());
    // An unset phase is Active (the API defaults it); a deletion timestamp means Terminating
    // even before the phase catches up.
    ns.metadata.deletion_timestamp.is_none() && phase.is_none_or(|p| p == "Active")
}

/// The ServiceAccounts of [`SERVICE_ACCOUNTS`] missing from `namespace`.
fn missing(namespace: &str, has: impl Fn(&str) -> bool) -> Vec<ServiceAccount> {
    SERVICE_ACCOUNTS
        .iter()
        .filter(|name| !has(name))
        .map(|name| ServiceAccount {
            metadata: ObjectMeta {
                name: Some((*name).into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let (queue, rx) = kit::queue();

    let namespaces = {
        let queue = queue.clone();
        kit::informer::<Namespace, _>(&ctx, watcher::Config::default(), move |_, ev| match ev {
            kit::Change::Apply { new: ns, .. } | kit::Change::InitApply(ns) => {
                queue.add(ns.metadata.name.clone().unwrap_or_default());
            }
            _ => {}
        })
    };
    let accounts = {
        let queue = queue.clone();
        kit::informer::<ServiceAccount, _>(&ctx, watcher::Config::default(), move |_, ev| {
            if let kit::Change::Delete(sa) = ev
                && SERVICE_ACCOUNTS.contains(&sa.metadata.name.as_deref().unwrap_or_default())
            {
                queue.add(sa.metadata.namespace.clone().unwrap_or_default());
            }
        })
    };
    if !kit::wait_synced(&[&namespaces], &shutdown).await
        || !kit::wait_synced(&[&accounts], &shutdown).await
    {
        return Ok(());
    }
    let ctx2 = ctx.clone();
    kit::work("serviceaccount", queue, rx, &shutdown, |ns| {
        let (ctx, namespaces, accounts) = (ctx2.clone(), namespaces.clone(), accounts.clone());
        async move { sync(&ctx, &namespaces, &accounts, &ns).await }
    })
    .await;
    Ok(())
}

async fn sync(
    ctx: &Context,
    namespaces: &Store<Namespace>,
    accounts: &Store<ServiceAccount>,
    ns: &str,
) -> anyhow::Result<()> {
    let Some(namespace) = namespaces.get(&ObjectRef::new(ns)) else {
        return Ok(());
    };
    if !namespace_active(&namespace) {
        return Ok(());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    for sa in missing(ns, |name| {
        accounts.get(&ObjectRef::new(name).within(ns)).is_some()
    }) {
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            // Our cache lagged behind someone else's create: fine.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            // Creates keep failing in a terminating namespace; nothing to do.
            Err(e) if is_namespace_terminating(&e) => {}
            Err(e) => {
                let name = sa.metadata.name.as_deref().unwrap_or_default();
                return Err(e).with_context(|| format!("creating ServiceAccount {ns}/{name}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn namespace_activity() {
        let ns = |phase: Option<&str>, deleting: bool| Namespace {
            metadata: ObjectMeta {
                deletion_timestamp: deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            status: Some(NamespaceStatus {
                phase: phase.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (ns(Some("Active"), false), true),
            (ns(None, false), true),
            (ns(Some("Terminating"), false), false),
            (ns(Some("Active"), true), false),
        ];
        for (n, want) in cases {
            assert_eq!(namespace_active(&n), want, "{:?}", n.status);
        }
    }

    #[test]
    fn missing_accounts() {
        assert!(missing("a", |_| true).is_empty());
        let m = missing("a", |_| false);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (
                m[0].metadata.name.as_deref(),
                m[0].metadata.namespace.as_deref()
            ),
            (Some("default"), Some("a"))
        );
    }
}
