//! AWS plumbing shared by the S3 store and the KMS key provider: the one
//! tokio runtime, the SDK configuration built from `[aws]`, one function per
//! client, and turning SDK errors into messages an operator can act on.
//!
//! The rest of the agent is synchronous (the pipeline runs on plain threads);
//! it reaches the async SDK through [`block_on`] on the shared runtime. The
//! runtime is created on first use, so commands on the embedded default never
//! start it.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
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
        refuse_plain_http(aws, url, "the AWS_ENDPOINT_URL environment or profile setting")?;
    }
    Ok(config)
}

fn refuse_plain_http(aws: &Aws, url: &str, source: &str) -> Result<()> {
    if url.starts_with("http://") && !aws.allow_http {
        return Err(UsageError(format!(
            "plain-http endpoint {url:?} (from {source}) refused: requests, data and signatures would \
             cross the network unencrypted; use https, or set aws.allow-http = true for a trusted test network"
        ))
        .into());
    }
    Ok(())
}

/// The S3 client for a repository.
pub fn s3_client(sdk: &SdkConfig, repo: &S3Repository) -> aws_sdk_s3::Client {
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
    aws_sdk_s3::Client::from_conf(b.build())
}

/// The KMS client for a key.
pub fn kms_client(sdk: &SdkConfig, endpoint: Option<&str>) -> aws_sdk_kms::Client {
    let mut b = aws_sdk_kms::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    aws_sdk_kms::Client::from_conf(b.build())
}

/// The STS client, at `endpoint` when the S3 or KMS endpoint is custom
/// (compatible servers that have STS serve it there).
pub fn sts_client(sdk: &SdkConfig, endpoint: Option<&str>) -> aws_sdk_sts::Client {
    let mut b = aws_sdk_sts::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    aws_sdk_sts::Client::from_conf(b.build())
}

/// The SNS client (for failure notifications).
pub fn sns_client(sdk: &SdkConfig, endpoint: Option<&str>) -> aws_sdk_sns::Client {
    let mut b = aws_sdk_sns::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    aws_sdk_sns::Client::from_conf(b.build())
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
