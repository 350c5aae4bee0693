//! What can go wrong with the network wall: a leaf of its own, so `crate::error` can name it
//! without depending on the wall (which depends on workspace and the uid pools, which use it).

/// What can go wrong with the network wall (a system failure: the host's, not the job's).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The nft program is not there but the config promises rules.
    #[error(
        "the network policy needs nftables, but {program:?} is not installed: apt-get install nftables (or set [network] nft to its path); only with [network] mode = \"open\" and deny = [] (no rule for any job) do jobs run without it"
    )]
    NftMissing {
        /// `[network] nft`.
        program: String,
    },
    /// nft refused or failed.
    #[error("nftables: cannot {what}: {stderr}")]
    Nft {
        /// What was being done.
        what: String,
        /// nft's own message.
        stderr: String,
    },
    /// libnftables loaded but could not run a command (its own failures are [`Self::Nft`]).
    #[error("nftables (libnftables): cannot {what}: {reason}")]
    Library {
        /// What was being done.
        what: String,
        /// Why.
        reason: String,
    },
    /// nft could not be run or ran past its bound.
    #[error("nftables: {0}")]
    Command(#[from] p3_contract::command::CommandError),
    /// A name of a refusing rule did not resolve.
    #[error("network policy: {0}")]
    Resolve(String),
    /// Jobs share one uid, so no per-job rule can tell them apart.
    #[error(
        "the network policy is per job uid, but shared_job_uid = true runs every job as one uid: remove shared_job_uid, or set [network] mode = \"open\" and deny = [] to run without a network policy"
    )]
    SharedUid,
    /// A local file operation.
    #[error("network: cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
