//! Credentials handed to a granted job. Each kind lives in its own module; nothing here decides
//! *whether* a job gets them (that is policy), only how they are obtained, refreshed and destroyed.

pub mod aws;
pub mod kerberos;
pub mod web_identity;
