//! `audit show --s3`: the usual queries over every host's shipped records, with a HOST column.

use std::io::Write;

use anyhow::Result;

use p3_executor::audit::{AuditRecord, Filter, print};
use p3_executor::config::Config;

use super::key::{dir, host_dir, parse_uri};
use super::store::{Store, settings};
use super::verify::fetch;

/// Print the shipped records matching `filter`; returns how many.
pub async fn show(
    cfg: &Config,
    uri: &str,
    host: Option<&str>,
    filter: &Filter,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize> {
    let (bucket, prefix) = parse_uri(uri).map_err(p3_executor::error::Error::Usage)?;
    let store = Store::connect(&settings(cfg.audit.s3.as_ref(), &bucket)).await?;
    let list_prefix = match host {
        Some(h) => host_dir(&prefix, h),
        None => dir(&prefix),
    };
    let mut records: Vec<(String, AuditRecord)> = Vec::new();
    for object in fetch(&store, &prefix, &list_prefix)
        .await?
        .into_iter()
        .flatten()
    {
        let Some(body) = object.body else { continue };
        for line in String::from_utf8_lossy(&body).lines() {
            match serde_json::from_str::<AuditRecord>(line) {
                Ok(r) if filter.matches(&r) => records.push((line.to_string(), r)),
                Ok(_) => {}
                Err(_) => eprintln!(
                    "s3://{bucket}/{}: a line that is not a record; skipped (audit verify --s3 says more)",
                    object.key
                ),
            }
        }
    }
    // One timeline across hosts; a host's own records keep their chain order.
    records.sort_by(|(_, a), (_, b)| (a.time, &a.host_id, a.seq).cmp(&(b.time, &b.host_id, b.seq)));
    print(&records, json, true, out)?;
    Ok(records.len())
}
