//! libnftables in-process: the same JSON transaction `nft -j -f` commits, and the same
//! `list table` it prints, without starting a process (a job's transaction ~2 ms in-process,
//! ~5 ms through the `nft` process: prepare's critical path). The library is what the `nft`
//! program is a thin front end to (nftables' `libnftables.so.1`, with its documented API in
//! `nftables/libnftables.h` and libnftables(3)), loaded with `dlopen` by the first call that
//! needs it, never at start-up, so the runner calls that do not touch the network wall do not
//! pay for loading it (and a host without it runs the program instead, [`super::nft`]).

use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock, PoisonError};

use libloading::Library;

use super::error::NetworkError;

/// The library's soname (nftables ≥ 0.9.0; Debian's `libnftables1`).
const SONAME: &str = "libnftables.so.1";
/// `NFT_CTX_DEFAULT`: a context with its own netlink socket.
const NFT_CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_JSON` (`1 << 4`): JSON output, and a command parsed as JSON first, as `nft -j`.
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

/// `struct nft_ctx`, opaque.
#[repr(C)]
struct NftCtx {
    _opaque: [u8; 0],
}

type CtxNew = unsafe extern "C" fn(u32) -> *mut NftCtx;
type CtxFree = unsafe extern "C" fn(*mut NftCtx);
type SetFlags = unsafe extern "C" fn(*mut NftCtx, c_uint);
type Buffer = unsafe extern "C" fn(*mut NftCtx) -> c_int;
type GetBuffer = unsafe extern "C" fn(*mut NftCtx) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut NftCtx, *const c_char) -> c_int;

/// The loaded library: the functions used, and the handle that keeps them mapped.
pub(crate) struct Libnftables {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    output_set_flags: SetFlags,
    buffer_output: Buffer,
    buffer_error: Buffer,
    get_output_buffer: GetBuffer,
    get_error_buffer: GetBuffer,
    run_cmd_from_buffer: RunCmd,
    /// One call at a time: besides its contexts the library keeps process-wide state it sets
    /// up and releases without locks (xtables and gmp set-up, the interface cache).
    lock: Mutex<()>,
    /// Never dropped (it lives in a static): the function pointers above stay valid.
    _lib: Library,
}

/// The library, loaded on the first call in this process; None when it does not load (not
/// installed, or without one of the functions used).
pub(crate) fn load() -> Option<&'static Libnftables> {
    static LIB: OnceLock<Option<Libnftables>> = OnceLock::new();
    LIB.get_or_init(|| {
        Libnftables::open()
            .inspect_err(|e| tracing::debug!("{SONAME} does not load: {e}"))
            .ok()
    })
    .as_ref()
}

/// A context, freed on every path.
struct Ctx<'a> {
    lib: &'a Libnftables,
    ptr: NonNull<NftCtx>,
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `nft_ctx_new` and is freed once, here; the buffers it handed
        // out were copied before.
        unsafe { (self.lib.ctx_free)(self.ptr.as_ptr()) }
    }
}

impl Libnftables {
    fn open() -> Result<Self, libloading::Error> {
        // SAFETY: loading libnftables runs only its (and its dependencies') constructors, which
        // set up nothing beyond their own state.
        let lib = unsafe { Library::new(SONAME) }?;
        // SAFETY: each type is the function's prototype in nftables/libnftables.h (stable
        // since nftables 0.9.0, symbol version LIBNFTABLES_1).
        unsafe {
            Ok(Libnftables {
                ctx_new: *lib.get::<CtxNew>(b"nft_ctx_new\0")?,
                ctx_free: *lib.get::<CtxFree>(b"nft_ctx_free\0")?,
                output_set_flags: *lib.get::<SetFlags>(b"nft_ctx_output_set_flags\0")?,
                buffer_output: *lib.get::<Buffer>(b"nft_ctx_buffer_output\0")?,
                buffer_error: *lib.get::<Buffer>(b"nft_ctx_buffer_error\0")?,
                get_output_buffer: *lib.get::<GetBuffer>(b"nft_ctx_get_output_buffer\0")?,
                get_error_buffer: *lib.get::<GetBuffer>(b"nft_ctx_get_error_buffer\0")?,
                run_cmd_from_buffer: *lib.get::<RunCmd>(b"nft_run_cmd_from_buffer\0")?,
                lock: Mutex::new(()),
                _lib: lib,
            })
        }
    }

    /// Run `cmd` as `nft -j` runs a file or its arguments: a JSON transaction (committed as
    /// one batch, all or nothing) or an nft command such as `list table inet t`. Returns what
    /// nft prints on stdout; a failure is [`NetworkError::Nft`] with what nft prints on stderr.
    ///
    /// No timeout, unlike the program: the call is netlink to the local kernel, which handles
    /// a batch within the send and answers a listing from memory, and the transactions hold
    /// addresses, never names to resolve, so nothing waits on anything remote.
    pub(crate) fn run(&self, cmd: &str, what: &str) -> Result<String, NetworkError> {
        let library = |reason: &str| NetworkError::Library {
            what: what.to_string(),
            reason: reason.to_string(),
        };
        let cmd = CString::new(cmd).map_err(|_| library("the command holds a NUL byte"))?;
        let _one = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        // The library exits the process when it cannot open its netlink socket (the program
        // exits 3); a socket of our own first turns that into an error.
        super::netlink::netfilter_socket().map_err(|e| NetworkError::Library {
            what: what.to_string(),
            reason: format!("cannot open a netfilter netlink socket: {e}"),
        })?;
        // SAFETY: no precondition; NULL is handled.
        let ptr = unsafe { (self.ctx_new)(NFT_CTX_DEFAULT) };
        let ctx = Ctx {
            lib: self,
            ptr: NonNull::new(ptr).ok_or_else(|| library("nft_ctx_new failed"))?,
        };
        let p = ctx.ptr.as_ptr();
        // SAFETY: `p` is a live context (freed when `ctx` drops, after the last use below).
        let buffered = unsafe {
            (self.output_set_flags)(p, NFT_CTX_OUTPUT_JSON);
            (self.buffer_output)(p) == 0 && (self.buffer_error)(p) == 0
        };
        if !buffered {
            return Err(library("cannot buffer the output"));
        }
        // SAFETY: `p` is live and `cmd` a NUL-terminated string that outlives the call.
        let rc = unsafe { (self.run_cmd_from_buffer)(p, cmd.as_ptr()) };
        if rc != 0 {
            // SAFETY: `p` is live and buffers its errors; the text is copied before it drops.
            let stderr = unsafe { text((self.get_error_buffer)(p)) };
            return Err(NetworkError::Nft {
                what: what.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        // SAFETY: as above, for the output buffer.
        Ok(unsafe { text((self.get_output_buffer)(p)) })
    }
}

/// The text of a buffer the library returned (NULL reads as empty).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string alive for the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
