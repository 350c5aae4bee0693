//! A loopback HTTP proxy in front of an S3 server that flips one byte in the body of GET
//! responses: the network corruption an integrity check must catch.
//!
//! ```ignore
//! let proxy = CorruptingProxy::start(upstream_port, 1);   // corrupt the first GET body only
//! srv.p3(&["s3", "cp", "s3://b/k", "out", "--endpoint-url", &proxy.endpoint()]);
//! assert_eq!(proxy.corrupted(), 1);
//! ```
//! [`CorruptingProxy::rewriting`] instead leaves the bodies alone and gives one response header
//! another value (a server's checksum that is wrong).
//!
//! Each request is forwarded with `Connection: close`, so every response ends with its
//! connection and needs no parsing of its framing. The request line and headers are otherwise
//! passed through untouched (SigV4 signatures stay valid: `Connection` is never signed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A running proxy; stops accepting when dropped.
pub struct CorruptingProxy {
    port: u16,
    corrupted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CorruptingProxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:upstream`, flipping one byte
    /// (in the middle) of the body of the first `budget` successful GET responses that have
    /// a body (`usize::MAX`: all of them).
    pub fn start(upstream: u16, budget: usize) -> Self {
        Self::spawn(upstream, budget, None)
    }

    /// Forward to `127.0.0.1:upstream` without touching any body, replacing the value of the
    /// response header `name` (case-insensitive) with `value` in every response that has it;
    /// [`Self::corrupted`] counts the responses changed.
    pub fn rewriting(upstream: u16, name: &str, value: &str) -> Self {
        Self::spawn(upstream, 0, Some((name.to_string(), value.to_string())))
    }

    fn spawn(upstream: u16, budget: usize, rewrite: Option<(String, String)>) -> Self {
        let rewrite = Arc::new(rewrite);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let corrupted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(AtomicUsize::new(budget));
        let (c, s) = (corrupted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (c, budget, rewrite) = (c.clone(), budget.clone(), rewrite.clone());
                std::thread::spawn(move || {
                    // A broken connection is the client's or the server's business.
                    let _ = relay(conn, upstream, &budget, &c, rewrite.as_ref().as_ref());
                });
            }
        });
        Self {
            port,
            corrupted,
            stop,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many response bodies were corrupted so far.
    pub fn corrupted(&self) -> usize {
        self.corrupted.load(Ordering::SeqCst)
    }
}

impl Drop for CorruptingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Read an HTTP head (request or response) up to and including the blank line.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn write_head(w: &mut impl Write, head: &[String]) -> std::io::Result<()> {
    let mut text = head.join("\r\n");
    text.push_str("\r\n\r\n");
    w.write_all(text.as_bytes())
}

fn relay(
    client: TcpStream,
    upstream: u16,
    budget: &AtomicUsize,
    corrupted: &AtomicUsize,
    rewrite: Option<&(String, String)>,
) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut request = read_head(&mut from_client)?;
    let method = request[0].split(' ').next().unwrap_or("").to_string();
    let body_len: u64 = header(&request, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    request.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
    request.push("Connection: close".into());

    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut to_server = server.try_clone()?;
    write_head(&mut to_server, &request)?;
    std::io::copy(&mut (&mut from_client).take(body_len), &mut to_server)?;

    let mut from_server = BufReader::new(server);
    let mut response = read_head(&mut from_server)?;
    if let Some((name, value)) = rewrite
        && header(&response, name).is_some()
    {
        for line in response.iter_mut().skip(1) {
            if line
                .split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            {
                *line = format!("{name}: {value}");
            }
        }
        corrupted.fetch_add(1, Ordering::SeqCst);
    }
    write_head(&mut to_client, &response)?;
    let status: u16 = response[0]
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: Option<u64> = header(&response, "content-length").and_then(|v| v.parse().ok());
    let flip_at = match len {
        Some(len)
            if method == "GET"
                && (200..300).contains(&status)
                && len > 0
                && budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_ok() =>
        {
            Some(len / 2)
        }
        _ => None,
    };
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from_server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(at) = flip_at
            && (pos..pos + n as u64).contains(&at)
        {
            buf[(at - pos) as usize] ^= 0x01;
            corrupted.fetch_add(1, Ordering::SeqCst);
        }
        to_client.write_all(&buf[..n])?;
        pos += n as u64;
    }
    let _ = to_client.shutdown(Shutdown::Both);
    Ok(())
}
