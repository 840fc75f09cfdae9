//! Joining like a k3s agent against a real in-process API server.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::ListParams;
use kubelet::{JoinError, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_token_joins_and_wrong_hash_is_refused() -> anyhow::Result<()> {
    let server = testkit::TestServer::start().await?;
    let token = server.running.token.clone();
    assert!(token.starts_with("K10"), "{token}");

    // The full token works as bearer and pins the CA `/cacerts` serves.
    let joined = join(&server.url(), &token).await?;
    let ns: Api<Namespace> = Api::all(joined.client.clone());
    let names: Vec<String> = ns
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.iter().any(|n| n == "kube-node-lease"), "{names:?}");
    assert!(joined.ca_pem.contains("BEGIN CERTIFICATE"));

    // The secret alone is accepted too (k3s accepts both).
    let secret = token
        .rsplit_once(':')
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    let mut cfg = kube::Config::new(server.url().parse()?);
    cfg.accept_invalid_certs = true;
    cfg.auth_info.token = Some(secret.clone().into());
    let by_secret = kube::Client::try_from(cfg)?;
    Api::<Namespace>::all(by_secret).get("default").await?;

    // A token pinning another CA is refused before anything is trusted.
    let (_, rest) = token.split_once("::").unwrap_or_default();
    let wrong = format!("K10{}::{rest}", "0".repeat(64));
    match join(&server.url(), &wrong).await {
        Err(e @ JoinError::CaMismatch { .. }) => {
            assert!(
                e.to_string().contains("does not match the join token"),
                "{e}"
            );
        }
        Err(e) => panic!("expected a CA mismatch, got {e}"),
        Ok(_) => panic!("a token with the wrong CA hash was accepted"),
    }
    // Not a K10 token at all.
    assert!(matches!(
        join(&server.url(), &secret).await,
        Err(JoinError::TokenFormat)
    ));
    // Right CA, wrong secret: the CA checks out but the API says 401.
    let (hash_part, _) = token.split_once("::").unwrap_or_default();
    let bad_secret = join(&server.url(), &format!("{hash_part}::server:nope")).await?;
    let err = Api::<Namespace>::all(bad_secret.client)
        .get("default")
        .await
        .expect_err("a wrong secret must not authenticate");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err}"
    );

    server.running.shutdown().await?;
    Ok(())
}
