//! No plain http by any route: an `http://` endpoint for S3, KMS or STS,
//! from a service's environment variable or a profile's `services` section
//! in the shared AWS config file, is refused before anything is sent,
//! naming where it came from; with `[aws] allow-http = true` the client
//! really sends there (which proves each route is one the SDK uses).
//!
//! The endpoint is a loopback port with a listener that never answers: a
//! refused run must leave no connection on it, an allowed one must.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;

use crate::util::Fixture;
use crate::util::moto::{aws_env, job};

/// A listener nobody answers on, and its `http://` URL.
fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

fn connected(l: &TcpListener) -> bool {
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

/// Which of vaultline's clients the route leads to, and a configuration
/// and command that use it with no endpoint of vaultline's own.
#[derive(Clone, Copy)]
enum Uses {
    /// An S3 repository, a local key: `init` reads the marker from S3.
    S3,
    /// A local repository, a KMS key: `init` asks KMS for the key.
    Kms,
    /// A local repository and key, a job that notifies SNS (so AWS is
    /// configured): `restore` records who runs it, asking STS.
    Sts,
}

fn fixture(uses: Uses, allow_http: bool, env: &[(&str, &str)]) -> Fixture {
    let mut fx = Fixture::new("");
    let src = fx.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let (repository, key, sns) = match uses {
        Uses::S3 => (
            "type = \"s3\"\nbucket = \"vl-endpoints\"\npath-style = true\n".to_string(),
            "storage = \"file\"\n",
            "",
        ),
        Uses::Kms => (
            format!("type = \"local\"\npath = {:?}\n", fx.repo().display().to_string()),
            "provider = \"kms\"\nkey-id = \"arn:aws:kms:us-east-1:111122223333:key/\
             1234abcd-12ab-34cd-56ef-1234567890ab\"\n",
            "",
        ),
        Uses::Sts => (
            format!("type = \"local\"\npath = {:?}\n", fx.repo().display().to_string()),
            "storage = \"file\"\n",
            "on-failure-sns = \"arn:aws:sns:us-east-1:111122223333:vaultline\"\n",
        ),
    };
    let text = format!(
        "[agent]\nhost = \"testhost\"\nstate-dir = {state:?}\n\n\
         [aws]\nregion = \"us-east-1\"\nmax-attempts = 1\ntimeout-secs = 2\nallow-http = {allow_http}\n\n\
         [repository]\n{repository}\n[key]\n{key}\n{jobs}{sns}",
        state = fx.state().display().to_string(),
        jobs = job("j", &[Path::new(&src)]),
    );
    std::fs::write(&fx.config, text).unwrap();
    fx.env = aws_env(("AKIAVAULTLINEENDPOINT", "endpoint-secret"));
    fx.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    fx
}

fn command(uses: Uses, fx: &Fixture) -> Vec<String> {
    match uses {
        Uses::S3 | Uses::Kms => vec!["init".into()],
        Uses::Sts => vec![
            "restore".into(),
            "latest".into(),
            "--target".into(),
            fx.path().join("t").display().to_string(),
        ],
    }
}

/// Runs the route refused and allowed: refused with exit 2 and exactly the
/// message naming `service` and `source`, nothing sent; allowed, a request
/// reaches the listener.
#[track_caller]
fn assert_refused_unless_allowed(
    uses: Uses,
    service: &str,
    source: &str,
    route: impl Fn(&str, &Path) -> Vec<(String, String)>,
) {
    for allow_http in [false, true] {
        let (l, url) = listener();
        let scratch = tempfile::tempdir().unwrap();
        let env = route(&url, scratch.path());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let fx = fixture(uses, allow_http, &env);
        let args = command(uses, &fx);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = fx.run(&args);
        if allow_http {
            assert!(
                !run.stderr.contains("plain-http"),
                "allowed, yet refused:\n{}",
                run.stderr
            );
            assert!(
                connected(&l),
                "with allow-http the {service} client sends to {url}: {}",
                run.stderr
            );
        } else {
            let run = run.code(2);
            assert_eq!(
                run.stderr.trim(),
                format!(
                    "error: setting up the AWS clients: plain-http endpoint \"{url}\" for {service} (from \
                     {source}) refused: requests, data and signatures would cross the network unencrypted; use \
                     https, or set aws.allow-http = true for a trusted test network"
                )
            );
            assert!(!connected(&l), "nothing was sent to {url}");
        }
    }
}

#[test]
fn aws_endpoint_url_s3_over_plain_http_is_refused() {
    assert_refused_unless_allowed(
        Uses::S3,
        "S3",
        "the AWS_ENDPOINT_URL_S3 environment variable",
        |url, _| vec![("AWS_ENDPOINT_URL_S3".into(), url.into())],
    );
}

#[test]
fn aws_endpoint_url_kms_over_plain_http_is_refused() {
    assert_refused_unless_allowed(
        Uses::Kms,
        "KMS",
        "the AWS_ENDPOINT_URL_KMS environment variable",
        |url, _| vec![("AWS_ENDPOINT_URL_KMS".into(), url.into())],
    );
}

#[test]
fn aws_endpoint_url_sts_over_plain_http_is_refused() {
    assert_refused_unless_allowed(
        Uses::Sts,
        "STS",
        "the AWS_ENDPOINT_URL_STS environment variable",
        |url, _| vec![("AWS_ENDPOINT_URL_STS".into(), url.into())],
    );
}

/// A shared config file whose profile `default` has `lines` and uses the
/// services section `plain` holding `services`.
fn config_file(dir: &Path, lines: &str, services: &str) -> Vec<(String, String)> {
    let path = dir.join("aws-config");
    std::fs::write(
        &path,
        format!("[default]\n{lines}services = plain\n\n[services plain]\n{services}"),
    )
    .unwrap();
    vec![("AWS_CONFIG_FILE".into(), path.display().to_string())]
}

#[test]
fn a_profile_services_section_with_a_plain_http_endpoint_is_refused() {
    assert_refused_unless_allowed(
        Uses::Kms,
        "KMS",
        "the services section of profile default in the shared AWS config file, kms endpoint_url",
        |url, dir| config_file(dir, "", &format!("kms =\n  endpoint_url = {url}\n")),
    );
    assert_refused_unless_allowed(
        Uses::S3,
        "S3",
        "the services section of profile default in the shared AWS config file, s3 endpoint_url",
        |url, dir| config_file(dir, "", &format!("s3 =\n  endpoint_url = {url}\n")),
    );
}

#[test]
fn a_plain_http_endpoint_for_every_service_is_refused_wherever_it_is_set() {
    assert_refused_unless_allowed(
        Uses::S3,
        "all services",
        "the AWS_ENDPOINT_URL environment variable",
        |url, _| vec![("AWS_ENDPOINT_URL".into(), url.into())],
    );
    assert_refused_unless_allowed(
        Uses::Kms,
        "all services",
        "endpoint_url of profile default in the shared AWS config file",
        |url, dir| config_file(dir, &format!("endpoint_url = {url}\n"), ""),
    );
}

#[test]
fn aws_endpoint_url_sns_over_plain_http_is_refused() {
    // SNS is only asked by the agent's service after a failed run, so the
    // allowed case shows only that nothing is refused; STS goes to a
    // closed https port meanwhile.
    for allow_http in [false, true] {
        let (l, url) = listener();
        let env = [
            ("AWS_ENDPOINT_URL_SNS", url.as_str()),
            ("AWS_ENDPOINT_URL_STS", "https://127.0.0.1:1"),
        ];
        let fx = fixture(Uses::Sts, allow_http, &env);
        let args = command(Uses::Sts, &fx);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = fx.run(&args);
        if allow_http {
            assert!(!run.stderr.contains("plain-http"), "{}", run.stderr);
        } else {
            assert_eq!(
                run.code(2).stderr.trim(),
                format!(
                    "error: setting up the AWS clients: plain-http endpoint \"{url}\" for SNS (from the \
                     AWS_ENDPOINT_URL_SNS environment variable) refused: requests, data and signatures would \
                     cross the network unencrypted; use https, or set aws.allow-http = true for a trusted test \
                     network"
                )
            );
        }
        assert!(!connected(&l), "nothing was sent to {url}");
    }
}
