//! Built-in steps that jobs call from `.gitlab-ci.yml`. They run inside the job, as the job
//! user, with the job's credentials: they enforce nothing the executor's policy does not.

pub mod image;
pub mod p3;
pub mod release;
pub mod s3;
