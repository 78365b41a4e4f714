//! AWS plumbing shared by the S3 store and the KMS key provider: the one
//! tokio runtime, the SDK configuration built from `[aws]`, one function per
//! client, and turning SDK errors into messages an operator can act on.
//!
//! No request leaves over plain http unless `[aws] allow-http = true`: each
//! client function works out the endpoint its client will use, the way the
//! SDK does (vaultline's own endpoint settings; else the service's
//! `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, the profile's
//! `services` section, the profile's `endpoint_url`), and refuses an
//! `http://` one naming where it came from, before anything is sent; the
//! clients the credential chain builds for itself (STS, SSO) are checked
//! when the configuration is loaded. Every client also carries a guard that
//! refuses a plain-http request, should any other route lead to one.
//!
//! The rest of the agent is synchronous (the pipeline runs on plain threads);
//! it reaches the async SDK through [`block_on`] on the shared runtime. The
//! runtime is created on first use, so commands on the embedded default never
//! start it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents, SharedInterceptor};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_types::origin::Origin;
use aws_types::service_config::ServiceConfigKey;
use tokio::runtime::Runtime;
use vaultline_config::{Aws, ChecksumPolicy, S3Repository};

use crate::error::UsageError;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process's tokio runtime (two worker threads: the SDK only waits on
/// the network; the heavy work happens on the pipeline's own threads).
pub fn runtime() -> Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vaultline-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    // A racing thread may have won; either runtime is fine, the loser's is
    // dropped before it ever ran anything.
    let _ = RUNTIME.set(rt);
    RUNTIME.get().context("the I/O runtime vanished")
}

/// Runs `fut` to completion from synchronous code. From inside the runtime
/// (the agent's service loop calls synchronous helpers too) the worker is
/// first handed back with `block_in_place`, so this never panics with a
/// nested runtime.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(tokio::task::block_in_place(|| handle.block_on(fut))),
        Err(_) => Ok(runtime()?.block_on(fut)),
    }
}

/// Loads the SDK configuration: the standard credential chain (environment,
/// profile, SSO, container and instance roles) and region chain, overridden
/// by `[aws]`, with our HTTPS client, retry budget and timeouts.
pub fn sdk_config(aws: &Aws) -> Result<SdkConfig> {
    let mut trust = TrustStore::default();
    if let Some(ca) = &aws.ca_bundle {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read aws.ca-bundle {}", ca.display()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(UsageError(format!(
                "aws.ca-bundle {} contains no PEM certificate (expected -----BEGIN CERTIFICATE----- blocks)",
                ca.display()
            ))
            .into());
        }
        trust = trust.with_pem_certificate(pem);
    }
    let tls_context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .context("cannot set up TLS")?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(tls_context)
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(aws.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(aws.timeout_secs.min(30)))
                .operation_attempt_timeout(Duration::from_secs(aws.timeout_secs))
                .build(),
        );
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &aws.profile {
        loader = loader.profile_name(profile);
    }
    let config = block_on(loader.load())?;
    if config.region().is_none() {
        return Err(UsageError(
            "no AWS region: set aws.region in the configuration, or AWS_REGION, or a region in the profile"
                .into(),
        )
        .into());
    }
    if let Some(url) = config.endpoint_url() {
        refuse_plain_http(aws, "all services", url, &shared_endpoint_source(&config, aws))?;
    }
    // The credential chain builds its own clients (STS to assume a role or
    // a web identity, SSO) from the environment and the profile, without
    // the ignore_configured_endpoint_urls switch; over plain http they
    // would carry credentials.
    for service in [STS, "SSO", "SSO OIDC"] {
        if let Some((url, source)) = env_or_profile_endpoint(&config, aws, service) {
            refuse_plain_http(aws, service, &url, &source)?;
        }
    }
    Ok(config)
}

/// The SDK's service ids (`AWS_ENDPOINT_URL_<ID>`, upper case with `_` for
/// spaces; the key in a profile's `services` section, lower case with `-`).
const S3: &str = "S3";
const KMS: &str = "KMS";
const STS: &str = "STS";
const SNS: &str = "SNS";
const S3_CONTROL: &str = "S3 Control";

fn refuse_plain_http(aws: &Aws, service: &str, url: &str, source: &str) -> Result<()> {
    if url.starts_with("http://") && !aws.allow_http {
        return Err(UsageError(format!(
            "plain-http endpoint {url:?} for {service} (from {source}) refused: requests, data and \
             signatures would cross the network unencrypted; use https, or set aws.allow-http = true for a \
             trusted test network"
        ))
        .into());
    }
    Ok(())
}

/// Refuses a plain-http endpoint for a client of `service` built from
/// `sdk`, unless allowed. `configured` is vaultline's own endpoint setting
/// for it (`url`, setting name), which the client function sets last, so
/// it wins; else the endpoint is the one the SDK picks.
fn check_endpoint(sdk: &SdkConfig, aws: &Aws, service: &str, configured: Option<(&str, &str)>) -> Result<()> {
    let resolved = match configured {
        Some((url, setting)) => Some((url.to_string(), format!("the {setting} setting"))),
        None => sdk_endpoint(sdk, aws, service),
    };
    match resolved {
        Some((url, source)) => refuse_plain_http(aws, service, &url, &source),
        None => Ok(()),
    }
}

/// The endpoint a client of `service` gets from `sdk`, with its source:
/// what every service's `config::Builder::from(&SdkConfig)` does (in the
/// aws-sdk-* crates): an endpoint set on the SdkConfig in code (vaultline
/// sets none), else the service configuration's lookup of `endpoint_url`
/// (which honours ignore_configured_endpoint_urls), else the SdkConfig's
/// own endpoint. The same calls, so the same answer.
fn sdk_endpoint(sdk: &SdkConfig, aws: &Aws, service: &str) -> Option<(String, String)> {
    if sdk.get_origin("endpoint_url").is_client_config() {
        return sdk
            .endpoint_url()
            .map(|url| (url.to_string(), "the SDK configuration".to_string()));
    }
    let found = sdk
        .service_config()
        .and_then(|c| c.load_config(endpoint_key(service, "AWS_ENDPOINT_URL")?));
    if let Some(url) = found {
        let source = match env_or_profile_endpoint(sdk, aws, service) {
            Some((same, source)) if same == url => source,
            _ => "the AWS environment or shared config file".to_string(),
        };
        return Some((url, source));
    }
    let url = sdk.endpoint_url()?;
    Some((url.to_string(), shared_endpoint_source(sdk, aws)))
}

/// An environment variable nobody sets: looking it up instead of
/// `AWS_ENDPOINT_URL` leaves only the profile's settings to find.
const NO_VARIABLE: &str = "VAULTLINE_UNSET_VARIABLE";

/// Where the SDK's configuration lookup (`EnvConfigValue::load` in
/// aws-runtime) finds an endpoint for `service`, in its order: the
/// service's environment variable, `AWS_ENDPOINT_URL`, the `services`
/// section of the selected profile, the profile's `endpoint_url`.
fn env_or_profile_endpoint(sdk: &SdkConfig, aws: &Aws, service: &str) -> Option<(String, String)> {
    let variable = format!("AWS_ENDPOINT_URL_{}", service.to_uppercase().replace(' ', "_"));
    for name in [variable.as_str(), "AWS_ENDPOINT_URL"] {
        if let Ok(url) = std::env::var(name) {
            return Some((url, format!("the {name} environment variable")));
        }
    }
    let in_profile = |service: &str| {
        sdk.service_config()
            .and_then(|c| c.load_config(endpoint_key(service, NO_VARIABLE)?))
    };
    let url = in_profile(service)?;
    let profile = profile_name(aws);
    // A service the services section does not name falls back to the
    // profile's own endpoint_url: asking for one no section names tells
    // which of the two this is.
    let source = if in_profile("vaultline no such service").as_deref() == Some(url.as_str()) {
        format!("endpoint_url of profile {profile} in the shared AWS config file")
    } else {
        format!(
            "the services section of profile {profile} in the shared AWS config file, {} endpoint_url",
            service.to_lowercase().replace(' ', "-")
        )
    };
    Some((url, source))
}

/// Where the SdkConfig's own endpoint (every service's fallback) was set.
fn shared_endpoint_source(sdk: &SdkConfig, aws: &Aws) -> String {
    let origin = sdk.get_origin("endpoint_url");
    if origin == Origin::shared_environment_variable() {
        "the AWS_ENDPOINT_URL environment variable".to_string()
    } else if origin == Origin::shared_profile_file() {
        format!(
            "endpoint_url of profile {} in the shared AWS config file",
            profile_name(aws)
        )
    } else {
        "the AWS environment or shared config file".to_string()
    }
}

fn endpoint_key<'a>(service: &'a str, variable: &'a str) -> Option<ServiceConfigKey<'a>> {
    ServiceConfigKey::builder()
        .service_id(service)
        .env(variable)
        .profile("endpoint_url")
        .build()
        .ok()
}

/// The profile the SDK reads: `[aws] profile`, else `AWS_PROFILE`, else
/// `default`.
fn profile_name(aws: &Aws) -> String {
    aws.profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "default".to_string())
}

/// The last line: refuses to transmit a request to a plain-http URL unless
/// allowed, whatever route led there. The endpoint checks above should
/// have refused it with a better message first.
#[derive(Debug)]
struct PlainHttpGuard {
    service: &'static str,
}

impl Intercept for PlainHttpGuard {
    fn name(&self) -> &'static str {
        "VaultlinePlainHttpGuard"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        let uri = context.request().uri();
        if uri.starts_with("http://") {
            let host: String = uri.chars().take_while(|c| *c != '?').collect();
            return Err(format!(
                "plain-http request to {host} for {} refused (set aws.allow-http = true for a trusted test \
                 network)",
                self.service
            )
            .into());
        }
        Ok(())
    }
}

/// S3 requests this process has transmitted, every attempt (retries
/// included) counted as it leaves: what a fleet scan cost, which the test
/// server cannot tell.
static S3_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// How many S3 requests this process has transmitted so far.
pub fn s3_requests_sent() -> u64 {
    S3_REQUESTS.load(Ordering::Relaxed)
}

/// Counts every S3 request transmitted (see [`s3_requests_sent`]).
#[derive(Debug)]
struct RequestCounter;

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "VaultlineRequestCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        S3_REQUESTS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The guard for a client of `service`, unless plain http is allowed.
fn guard(aws: &Aws, service: &'static str) -> Option<SharedInterceptor> {
    (!aws.allow_http).then(|| SharedInterceptor::new(PlainHttpGuard { service }))
}

/// The S3 client for a repository.
pub fn s3_client(sdk: &SdkConfig, aws: &Aws, repo: &S3Repository) -> Result<aws_sdk_s3::Client> {
    check_endpoint(
        sdk,
        aws,
        S3,
        repo.endpoint.as_deref().map(|u| (u, "repository.endpoint")),
    )?;
    let checksums = match repo.request_checksum {
        ChecksumPolicy::WhenSupported => RequestChecksumCalculation::WhenSupported,
        ChecksumPolicy::WhenRequired => RequestChecksumCalculation::WhenRequired,
    };
    let mut b = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(repo.path_style)
        .request_checksum_calculation(checksums)
        .response_checksum_validation(ResponseChecksumValidation::WhenSupported);
    if let Some(url) = &repo.endpoint {
        b = b.endpoint_url(url);
    }
    if let Some(g) = guard(aws, S3) {
        b = b.interceptor(g);
    }
    b = b.interceptor(RequestCounter);
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

/// The KMS client for a key at `endpoint` (`[key] endpoint`).
pub fn kms_client(sdk: &SdkConfig, aws: &Aws, endpoint: Option<&str>) -> Result<aws_sdk_kms::Client> {
    check_endpoint(sdk, aws, KMS, endpoint.map(|u| (u, "key.endpoint")))?;
    let mut b = aws_sdk_kms::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    if let Some(g) = guard(aws, KMS) {
        b = b.interceptor(g);
    }
    Ok(aws_sdk_kms::Client::from_conf(b.build()))
}

/// The STS client, at `endpoint` when the S3 or KMS endpoint is custom
/// (compatible servers that have STS serve it there).
pub fn sts_client(sdk: &SdkConfig, aws: &Aws, endpoint: Option<&str>) -> Result<aws_sdk_sts::Client> {
    check_endpoint(
        sdk,
        aws,
        STS,
        endpoint.map(|u| (u, "repository.endpoint or key.endpoint")),
    )?;
    let mut b = aws_sdk_sts::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    if let Some(g) = guard(aws, STS) {
        b = b.interceptor(g);
    }
    Ok(aws_sdk_sts::Client::from_conf(b.build()))
}

/// The SNS client (for failure notifications), at `[aws] sns-endpoint`
/// when set.
pub fn sns_client(sdk: &SdkConfig, aws: &Aws) -> Result<aws_sdk_sns::Client> {
    let endpoint = aws.sns_endpoint.as_deref();
    check_endpoint(sdk, aws, SNS, endpoint.map(|u| (u, "aws.sns-endpoint")))?;
    let mut b = aws_sdk_sns::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    if let Some(g) = guard(aws, SNS) {
        b = b.interceptor(g);
    }
    Ok(aws_sdk_sns::Client::from_conf(b.build()))
}

/// The S3 Control client (account-level Block Public Access), at exactly
/// `endpoint` when the S3 endpoint is custom: the account id normally goes
/// in front of the host name, which a custom endpoint (often an IP
/// address) cannot take.
pub fn s3control_client(
    sdk: &SdkConfig,
    aws: &Aws,
    endpoint: Option<&str>,
) -> Result<aws_sdk_s3control::Client> {
    check_endpoint(sdk, aws, S3_CONTROL, endpoint.map(|u| (u, "repository.endpoint")))?;
    let mut b = aws_sdk_s3control::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_resolver(FixedEndpoint(url.to_string()));
    }
    if let Some(g) = guard(aws, S3_CONTROL) {
        b = b.interceptor(g);
    }
    Ok(aws_sdk_s3control::Client::from_conf(b.build()))
}

/// S3 Control at exactly the configured URL.
#[derive(Debug)]
struct FixedEndpoint(String);

impl aws_sdk_s3control::config::endpoint::ResolveEndpoint for FixedEndpoint {
    fn resolve_endpoint<'a>(
        &'a self,
        _params: &'a aws_sdk_s3control::config::endpoint::Params,
    ) -> aws_sdk_s3control::config::endpoint::EndpointFuture<'a> {
        aws_sdk_s3control::config::endpoint::EndpointFuture::ready(Ok(
            aws_smithy_types::endpoint::Endpoint::builder()
                .url(self.0.clone())
                .build(),
        ))
    }
}

/// What went wrong in an SDK call, for a message: the service's error code
/// and message, or the transport failure. Never includes credentials (the
/// SDK keeps them out of its errors; we add nothing from the request).
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) if !msg.is_empty() => format!("{code}: {msg}"),
                (Some(code), _) => code.to_string(),
                // A body in another protocol than the SDK expects (some
                // compatible servers answer JSON APIs in XML): pick out the
                // code and message if they are there.
                _ => {
                    let raw = service.raw();
                    let body = raw
                        .body()
                        .bytes()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    let tag = |name: &str| {
                        let open = format!("<{name}>");
                        let start = body.find(&open)? + open.len();
                        let len = body[start..].find(&format!("</{name}>"))?;
                        Some(body[start..start + len].trim().to_string())
                    };
                    match (tag("Code"), tag("Message")) {
                        (Some(code), Some(msg)) if !msg.is_empty() => format!("{code}: {msg}"),
                        (Some(code), _) => code,
                        _ => format!(
                            "HTTP {} with an error response that could not be read",
                            raw.status().as_u16()
                        ),
                    }
                }
            }
        }
        SdkError::TimeoutError(_) => "timed out (after the configured retries)".to_string(),
        _ => {
            let chain = source_chain(err);
            if chain.contains("loading credentials") || chain.contains("no credentials") {
                return "no usable AWS credentials (looked in the environment, the shared config and \
                        credentials files, SSO, the container and instance roles)"
                    .to_string();
            }
            match err {
                SdkError::DispatchFailure(_) => format!("could not reach the endpoint: {chain}"),
                _ => chain,
            }
        }
    }
}

/// Every message in an error's source chain, in order, without repeats and
/// without the Debug dumps the SDK's own display adds.
pub fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let msg = e.to_string();
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The service's error code, when the service answered with one.
pub fn error_code<E>(err: &SdkError<E, HttpResponse>) -> Option<String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(e) => match e.err().code() {
            Some(code) => Some(code.to_string()),
            None => describe(err).split(':').next().map(str::to_string),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_stops_a_plain_http_request_before_anything_is_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&url)
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(2))
                    .build(),
            )
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "k", "s", None, None, "test",
            ))
            .interceptor(PlainHttpGuard { service: KMS })
            .build();
        let err = block_on(aws_sdk_kms::Client::from_conf(conf).list_keys().send())
            .unwrap()
            .unwrap_err();
        let chain = source_chain(&err);
        assert!(
            chain.contains(&format!("plain-http request to {url}/ for KMS refused")),
            "{chain}"
        );
        assert!(
            listener
                .accept()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing was sent"
        );
    }
}
