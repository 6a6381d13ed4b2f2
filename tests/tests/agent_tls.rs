//! The agent API over TLS, by configuration.

use kvmotion_tests::agent::{AgentProcess, credentials};
use kvmotion_tests::lab::exclusive;

#[tokio::test]
async fn the_agent_serves_its_api_over_tls_when_given_a_certificate() {
    let _lab = exclusive().await;
    let dir = kvmotion_tests::repo_root().join("target/test-credentials/tls");
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("agent.crt"), dir.join("agent.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=node-a",
        ])
        .args(["-addext", "subjectAltName=IP:10.98.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = AgentProcess::start(
        "node-a",
        "tls",
        &[
            "--listen",
            "10.98.0.1:9444",
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
        ],
    )
    .await;
    let curl = |path: &str, extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/stdout",
                "-w",
                "\n%{http_code}",
            ])
            .args(extra)
            .arg(format!("https://10.98.0.1:9444{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let cacert = ["--cacert", &cert.to_string_lossy()].map(String::from);
    let cacert: Vec<&str> = cacert.iter().map(String::as_str).collect();
    assert!(
        curl("/healthz", &cacert).ends_with("ok\n200"),
        "healthz over TLS"
    );
    let auth = format!("Authorization: Bearer {}", credentials().controller_token);
    let mut with_auth = cacert.clone();
    with_auth.extend(["-H", &auth]);
    let answer = curl("/v1/migrations/none", &with_auth);
    assert!(
        answer.ends_with("404") && answer.contains("UnknownMigration"),
        "{answer}"
    );
    // Without the CA, the certificate is not trusted: TLS really is on.
    assert!(
        curl("/healthz", &[]).contains("certificate"),
        "a plain client must reject the self-signed certificate"
    );
    drop(agent);
}
