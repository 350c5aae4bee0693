//! What every transfer shares: the step's context [`Ctx`] (client, limits, the memory budget,
//! the multipart uploads to abort on interruption) and `Parts`, the bounded set of part tasks
//! that multipart uploads, multipart copies and ranged downloads all run.
//!
//! Memory is bounded by one semaphore counting buffered KiB: every part or small object holds
//! permits for its buffer while it is in memory, so the peak is about `memory_budget` however
//! many files run at once. Buffers are `Bytes`, handed to the SDK without copying.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

use super::error::{S3Error, Target, classify};
use super::progress::Progress;
use super::uri::S3Uri;

/// Largest object CopyObject accepts (the default [`Ctx::copy_threshold`]).
pub const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;

/// Shared state of one step invocation.
pub struct Ctx {
    /// The S3 client (cheap to clone; shares one connection pool).
    pub client: Client,
    /// Endpoint in use, for error messages.
    pub endpoint: String,
    /// The CA bundle trusted, if any, for certificate errors.
    pub trust: Option<crate::tls::CaBundle>,
    /// Part size for multipart uploads and ranged downloads; also the single-request threshold.
    pub part_size: u64,
    /// Files in flight at once.
    pub concurrency: usize,
    /// Parts of one file in flight at once.
    pub part_parallelism: usize,
    memory: Arc<Semaphore>,
    memory_kib: u32,
    /// Progress counters and output.
    pub progress: Arc<Progress>,
    /// Multipart uploads in progress (upload id → bucket, key), aborted on interruption.
    uploads: Mutex<HashMap<String, (String, String)>>,
    /// Mode of downloaded files (0666 minus the umask, like any new file; the temporary
    /// file they start as is 0600).
    pub file_mode: u32,
    /// Objects larger than this are copied with UploadPartCopy (at most CopyObject's 5 GiB).
    pub copy_threshold: u64,
    /// `--max-attempts`: also bounds re-fetches of a download whose body broke off.
    pub max_attempts: u32,
    /// `--verify`: which checks downloads may use.
    pub verify: super::download::Verify,
}

impl Ctx {
    /// New context. `memory_budget` bounds the bytes buffered at once.
    pub fn new(
        client: Client,
        endpoint: String,
        part_size: u64,
        concurrency: usize,
        memory_budget: u64,
        progress: Arc<Progress>,
    ) -> Self {
        let budget = memory_budget.max(part_size);
        let memory_kib = u32::try_from(budget.div_ceil(1024)).unwrap_or(u32::MAX);
        let part_parallelism = ((budget / part_size.max(1)) as usize).clamp(1, concurrency.max(1));
        Self {
            client,
            endpoint,
            trust: None,
            part_size,
            concurrency: concurrency.max(1),
            part_parallelism,
            memory: Arc::new(Semaphore::new(memory_kib as usize)),
            memory_kib,
            progress,
            uploads: Mutex::new(HashMap::new()),
            file_mode: 0o644,
            copy_threshold: MAX_COPY_OBJECT,
            max_attempts: 5,
            verify: super::download::Verify::Auto,
        }
    }

    /// What a request of `op` on `bucket` (and `key`) was about, for [`classify`].
    pub(super) fn target<'a>(
        &'a self,
        op: &'static str,
        bucket: &'a str,
        key: Option<&'a str>,
    ) -> Target<'a> {
        Target {
            op,
            bucket,
            key,
            endpoint: &self.endpoint,
            trust: self.trust.as_ref(),
        }
    }

    /// Turns an SDK error of `op` on the object `uri` into an [`S3Error`] naming it (for
    /// `map_err`).
    pub(super) fn object_error<'a, E>(
        &'a self,
        op: &'static str,
        uri: &'a S3Uri,
    ) -> impl FnOnce(SdkError<E, HttpResponse>) -> S3Error + 'a
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        move |e| classify(e, &self.target(op, &uri.bucket, Some(&uri.key)))
    }

    /// Wait until `bytes` more may be buffered.
    pub(super) async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.memory_kib);
        self.memory
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("semaphore never closed")
    }

    /// Remember the multipart upload `upload_id` to `dst`, so an interruption aborts it.
    pub(super) fn register_upload(&self, upload_id: &str, dst: &S3Uri) {
        self.uploads
            .lock()
            .expect("lock")
            .insert(upload_id.to_string(), (dst.bucket.clone(), dst.key.clone()));
    }

    /// Forget a multipart upload that was completed or aborted.
    pub(super) fn forget_upload(&self, upload_id: &str) {
        self.uploads.lock().expect("lock").remove(upload_id);
    }

    /// AbortMultipartUpload: the server drops the parts uploaded so far.
    pub(super) async fn abort_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), S3Error> {
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify(e, &self.target("AbortMultipartUpload", bucket, Some(key))))?;
        Ok(())
    }

    /// Abort every multipart upload still registered (after Ctrl-C / SIGTERM).
    pub async fn abort_all_uploads(&self) {
        let pending: Vec<_> = self.uploads.lock().expect("lock").drain().collect();
        for (id, (bucket, key)) in pending {
            match self.abort_upload(&bucket, &key, &id).await {
                Ok(()) => self
                    .progress
                    .eprintln(&format!("aborted multipart upload of s3://{bucket}/{key}")),
                Err(e) => self.progress.eprintln(&format!(
                    "warning: could not abort multipart upload of s3://{bucket}/{key}: {e}"
                )),
            }
        }
    }
}

/// An ETag as S3 sends it (quoted) → without the quotes.
pub(super) fn unquote_etag(etag: Option<&str>) -> Option<String> {
    etag.map(|e| e.trim_matches('"').to_string())
}

/// The outcome of a joined task: a cancelled task means the step was interrupted; a panic
/// goes on unwinding.
pub(super) fn task_result<T>(joined: Result<T, JoinError>) -> Result<T, S3Error> {
    match joined {
        Ok(r) => Ok(r),
        Err(e) if e.is_cancelled() => Err(S3Error::Interrupted),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The part tasks of one object, at most `limit` in flight. The first failure ends the
/// whole: dropping `Parts` (on an error or an interruption) cancels the tasks still running.
pub(super) struct Parts<T> {
    set: JoinSet<Result<T, S3Error>>,
    limit: usize,
    done: Vec<T>,
}

impl<T: Send + 'static> Parts<T> {
    /// No parts yet; at most `limit` (at least one) will run at once.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            set: JoinSet::new(),
            limit: limit.max(1),
            done: Vec::new(),
        }
    }

    /// Wait until another part may start, collecting the parts that finish meanwhile.
    pub(super) async fn slot(&mut self) -> Result<(), S3Error> {
        while self.set.len() >= self.limit {
            self.join_one().await?;
        }
        Ok(())
    }

    /// Start a part (after [`Parts::slot`]).
    pub(super) fn spawn(
        &mut self,
        part: impl Future<Output = Result<T, S3Error>> + Send + 'static,
    ) {
        self.set.spawn(part);
    }

    /// Wait for every part: their results, in the order they finished.
    pub(super) async fn finish(mut self) -> Result<Vec<T>, S3Error> {
        while !self.set.is_empty() {
            self.join_one().await?;
        }
        Ok(self.done)
    }

    async fn join_one(&mut self) -> Result<(), S3Error> {
        if let Some(joined) = self.set.join_next().await {
            self.done.push(task_result(joined)??);
        }
        Ok(())
    }
}
