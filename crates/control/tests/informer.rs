//! Shared informers against a real in-process API server: one watch per kind and selector,
//! every subscriber sees every change in order, a late subscriber first gets the cache.

use std::time::Duration;

use control::informer::{Change, Informers};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What a change says, as text: `init`, `+name` (listed), `done`, `~name` (applied), `-name`.
fn describe(c: &Change<ConfigMap>) -> String {
    match c {
        Change::Init => "init".into(),
        Change::InitApply(o) => format!("+{}", o.name_any()),
        Change::InitDone => "done".into(),
        Change::Apply { old, new } => format!(
            "~{}{}",
            new.name_any(),
            if old.is_some() { "'" } else { "" }
        ),
        Change::Delete(o) => format!("-{}", o.name_any()),
    }
}

/// The next `n` changes, described.
async fn next(
    s: &mut (impl Stream<Item = Change<ConfigMap>> + Unpin),
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let c = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        out.push(describe(&c));
    }
    Ok(out)
}

async fn create(api: &Api<ConfigMap>, name: &str, label: &str) -> anyhow::Result<()> {
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"team": label}}, "data": {"k": "v"}}),
    )?;
    api.create(&PostParams::default(), &cm).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_share_one_watch_and_late_ones_get_the_cache() -> anyhow::Result<()> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    create(&api, "a", "x").await?;

    let shutdown = CancellationToken::new();
    let informers = Informers::default();
    let team_x = || watcher::Config::default().labels("team=x");
    let first = informers.get::<ConfigMap>(&client, team_x(), &shutdown);
    let mut early = Box::pin(first.subscribe());
    assert_eq!(next(&mut early, 3).await?, ["init", "+a", "done"]);

    create(&api, "b", "x").await?;
    create(&api, "other", "y").await?;
    assert_eq!(next(&mut early, 1).await?, ["~b"]);

    // The same kind and selector is the same informer: its cache is already complete.
    let again = informers.get::<ConfigMap>(&client, team_x(), &shutdown);
    let mut names: Vec<String> = again.store().state().iter().map(|c| c.name_any()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let mut late = Box::pin(again.subscribe());
    let mut replay = next(&mut late, 4).await?;
    replay[1..3].sort();
    assert_eq!(replay, ["init", "+a", "+b", "done"]);

    // A different selector is a different informer.
    let all = informers.get::<ConfigMap>(&client, watcher::Config::default(), &shutdown);
    let mut everything = Box::pin(all.subscribe());
    let mut listed = next(&mut everything, 5).await?;
    listed[1..4].sort();
    assert_eq!(listed, ["init", "+a", "+b", "+other", "done"]);

    // Both subscribers see the update (with the version it replaced) and the deletion.
    let mut b = api.get("b").await?;
    b.data = Some([("k".to_string(), "w".to_string())].into());
    api.replace("b", &PostParams::default(), &b).await?;
    api.delete("a", &DeleteParams::default()).await?;
    assert_eq!(next(&mut early, 2).await?, ["~b'", "-a"]);
    assert_eq!(next(&mut late, 2).await?, ["~b'", "-a"]);
    assert_eq!(next(&mut everything, 2).await?, ["~b'", "-a"]);
    shutdown.cancel();
    Ok(())
}
