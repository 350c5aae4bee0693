//! Errors of the S3 step, each naming the object and the cause in words a job author can act on.

use std::path::PathBuf;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Why an S3 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// The bucket does not exist.
    #[error("{uri}: no such bucket {bucket:?}")]
    NoSuchBucket {
        /// Object or prefix being accessed.
        uri: String,
        /// Bucket.
        bucket: String,
    },
    /// The object does not exist.
    #[error("{uri}: no such key")]
    NoSuchKey {
        /// Object.
        uri: String,
    },
    /// The credentials are valid but not allowed to do this.
    #[error("{uri}: access denied ({op}): {message}")]
    AccessDenied {
        /// Object or bucket.
        uri: String,
        /// Operation.
        op: &'static str,
        /// Server's message.
        message: String,
    },
    /// The server rejected the credentials themselves.
    #[error(
        "{uri}: the S3 credentials were rejected ({code}: {message}); check AWS_PROFILE / the job's devstage"
    )]
    BadCredentials {
        /// Object or bucket.
        uri: String,
        /// Error code (InvalidAccessKeyId, SignatureDoesNotMatch, ...).
        code: String,
        /// Server's message.
        message: String,
    },
    /// The credentials expired.
    #[error("{uri}: the S3 credentials have expired ({message}); re-run the job to get fresh ones")]
    Expired {
        /// Object or bucket.
        uri: String,
        /// Server's message.
        message: String,
    },
    /// No credentials could be found.
    #[error("no S3 credentials: {0} (was the job granted a devstage with S3 access?)")]
    NoCredentials(String),
    /// The endpoint cannot be reached or does not speak S3.
    #[error("{uri}: cannot reach S3 endpoint {endpoint}: {detail}")]
    Endpoint {
        /// Object or bucket.
        uri: String,
        /// Endpoint in use.
        endpoint: String,
        /// Cause.
        detail: String,
    },
    /// Any other error reported by the service.
    #[error("{uri}: {op} failed: {code}: {message}")]
    Service {
        /// Object or bucket.
        uri: String,
        /// Operation.
        op: &'static str,
        /// Error code or HTTP status.
        code: String,
        /// Server's message.
        message: String,
    },
    /// A local file or directory problem.
    #[error("{}: {what}: {source}", path.display())]
    Local {
        /// Path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The data read back does not match what the server says it stored.
    #[error("{uri}: integrity check failed: {detail}")]
    Integrity {
        /// Object.
        uri: String,
        /// What did not match.
        detail: String,
    },
    /// A path or argument that cannot be used as given (not a usage error of the command
    /// line: a missing directory, a file where a directory is needed).
    #[error("{0}")]
    Invalid(String),
    /// The whole command ran past `--timeout`.
    #[error("{0}")]
    Deadline(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl S3Error {
    /// Errors after which continuing with other files is pointless.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            S3Error::NoSuchBucket { .. }
                | S3Error::BadCredentials { .. }
                | S3Error::Expired { .. }
                | S3Error::NoCredentials(_)
                | S3Error::Endpoint { .. }
                | S3Error::Invalid(_)
                | S3Error::Deadline(_)
                | S3Error::Interrupted
        )
    }

    /// Local I/O error.
    pub fn local(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        S3Error::Local {
            path: path.into(),
            what,
            source,
        }
    }
}

/// What a failed request was about, to name it in the error.
pub struct Target<'a> {
    /// Operation, e.g. `GetObject`.
    pub op: &'static str,
    /// Bucket.
    pub bucket: &'a str,
    /// Key, when the request is about an object.
    pub key: Option<&'a str>,
    /// Endpoint in use.
    pub endpoint: &'a str,
    /// The CA bundle trusted, if any (named in certificate errors).
    pub trust: Option<&'a crate::tls::CaBundle>,
}

impl Target<'_> {
    fn endpoint_error(&self, uri: String, detail: String) -> S3Error {
        let detail = if crate::tls::is_certificate_error(&detail) {
            format!("{detail}: {}", crate::tls::certificate_hint(self.trust))
        } else {
            detail
        };
        S3Error::Endpoint {
            uri,
            endpoint: self.endpoint.to_string(),
            detail,
        }
    }

    fn uri(&self) -> String {
        match self.key {
            Some(k) => format!("s3://{}/{k}", self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }
}

/// Turn an SDK error into an [`S3Error`] naming `target`.
pub fn classify<E>(err: SdkError<E, HttpResponse>, target: &Target<'_>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let uri = target.uri();
    let status = match &err {
        SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
        _ => None,
    };
    match err {
        SdkError::ServiceError(ref ctx) => {
            let code = ctx.err().code().unwrap_or("").to_string();
            let message = ctx.err().message().unwrap_or("").to_string();
            from_code(&code, &message, status.unwrap_or(0), target, uri)
        }
        SdkError::DispatchFailure(ref d) => {
            let detail = source_chain(&err);
            let lower = detail.to_ascii_lowercase();
            if !d.is_io() && !d.is_timeout() && lower.contains("credentials") {
                S3Error::NoCredentials(credential_detail(&detail))
            } else {
                target.endpoint_error(uri, detail)
            }
        }
        // A request that failed every attempt (the retry log's "gave up after N attempts in
        // T s, the last: ..."), or an attempt timeout.
        SdkError::TimeoutError(_) => {
            let detail = std::error::Error::source(&err)
                .map_or_else(|| "request timed out".into(), source_chain);
            target.endpoint_error(uri, detail)
        }
        SdkError::ResponseError(_) => target.endpoint_error(
            uri,
            format!(
                "the response is not S3's ({}); is this the right endpoint?",
                source_chain(&err)
            ),
        ),
        other => {
            let detail = source_chain(&other);
            if detail.to_ascii_lowercase().contains("credentials") {
                S3Error::NoCredentials(credential_detail(&detail))
            } else {
                S3Error::Service {
                    uri,
                    op: target.op,
                    code: "request".into(),
                    message: detail,
                }
            }
        }
    }
}

/// The credential chain's own explanation spans lines; keep its first.
fn credential_detail(detail: &str) -> String {
    let first = detail
        .split(": ")
        .find(|p| p.contains("credentials"))
        .unwrap_or(detail);
    let first = first.lines().next().unwrap_or(first);
    first
        .split(". Attempted")
        .next()
        .unwrap_or(first)
        .trim()
        .to_string()
}

/// `outer: cause: root cause`, skipping repeats (the SDK's wrappers often restate their
/// source) and without the Debug dump `DisplayErrorContext` appends.
fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn from_code(code: &str, message: &str, status: u16, target: &Target<'_>, uri: String) -> S3Error {
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message.to_string()
    };
    match code {
        "NoSuchBucket" => S3Error::NoSuchBucket {
            uri,
            bucket: target.bucket.to_string(),
        },
        "NoSuchKey" | "NotFound" if target.key.is_some() => S3Error::NoSuchKey { uri },
        "AccessDenied" | "AllAccessDisabled" | "Forbidden" if status != 0 => {
            S3Error::AccessDenied {
                uri,
                op: target.op,
                message,
            }
        }
        "ExpiredToken" | "TokenRefreshRequired" => S3Error::Expired { uri, message },
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "InvalidToken"
        | "InvalidSecurity"
        | "AuthorizationHeaderMalformed" => S3Error::BadCredentials {
            uri,
            code: code.to_string(),
            message,
        },
        // HEAD requests have no body, so there is no code: go by the status alone.
        "" | "NotFound" if status == 404 => match target.key {
            Some(_) => S3Error::NoSuchKey { uri },
            None => S3Error::NoSuchBucket {
                uri,
                bucket: target.bucket.to_string(),
            },
        },
        "" | "Forbidden" if status == 403 => S3Error::AccessDenied {
            uri,
            op: target.op,
            message: "HTTP 403 (no details: HEAD responses have no body)".into(),
        },
        _ => S3Error::Service {
            uri,
            op: target.op,
            code: if code.is_empty() {
                format!("HTTP {status}")
            } else {
                code.to_string()
            },
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: Option<&str>) -> Target<'_> {
        Target {
            op: "GetObject",
            bucket: "bkt",
            key,
            endpoint: "http://e",
            trust: None,
        }
    }

    fn classify_code(code: &str, status: u16, key: Option<&str>) -> S3Error {
        let target = t(key);
        let uri = target.uri();
        from_code(code, "server says", status, &target, uri)
    }

    #[test]
    fn service_codes_become_clear_errors() {
        let e = classify_code("AccessDenied", 403, Some("k"));
        assert_eq!(
            e.to_string(),
            "s3://bkt/k: access denied (GetObject): server says"
        );
        let e = classify_code("ExpiredToken", 400, Some("k"));
        assert!(matches!(e, S3Error::Expired { .. }));
        assert!(e.to_string().contains("have expired"), "{e}");
        assert!(e.is_fatal());
        let e = classify_code("SignatureDoesNotMatch", 403, None);
        assert!(matches!(e, S3Error::BadCredentials { .. }), "{e}");
        let e = classify_code("NoSuchBucket", 404, Some("k"));
        assert_eq!(e.to_string(), "s3://bkt/k: no such bucket \"bkt\"");
        let e = classify_code("NoSuchKey", 404, Some("k"));
        assert_eq!(e.to_string(), "s3://bkt/k: no such key");
        assert!(!e.is_fatal(), "other files may still exist");
        let e = classify_code("SlowDown", 503, Some("k"));
        assert_eq!(
            e.to_string(),
            "s3://bkt/k: GetObject failed: SlowDown: server says"
        );
    }

    #[test]
    fn head_responses_without_a_body_go_by_status() {
        let target = t(Some("k"));
        assert!(matches!(
            from_code("", "", 404, &target, target.uri()),
            S3Error::NoSuchKey { .. }
        ));
        let target = t(None);
        assert!(matches!(
            from_code("", "", 404, &target, target.uri()),
            S3Error::NoSuchBucket { .. }
        ));
        assert!(matches!(
            from_code("", "", 403, &target, target.uri()),
            S3Error::AccessDenied { .. }
        ));
    }

    #[test]
    fn credential_chain_detail_is_one_line() {
        assert_eq!(
            credential_detail(
                "dispatch failure: no credentials found in chain. Attempted:\n  Environment"
            ),
            "no credentials found in chain"
        );
    }
}
