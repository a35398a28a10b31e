//! The C ABI of tdlc's runtime, built as `libtdl_runtime.a`.
//!
//! Every shared library `tdlc compile --emit so` writes links this archive.
//! Its generated entry points (`tdl_run_<graph>`) call [`tdl_rt_run`]; the
//! generated header declares [`tdl_last_error`], [`tdl_last_run_report`]
//! and [`tdl_set_threads`] for the caller. Nothing here panics across the C boundary: a panic is
//! caught and reported as an error.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

use tdl_rt::aot::{self, RawBuf};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_REPORT: RefCell<CString> = RefCell::new(CString::default());
}

/// Threads set by `tdl_set_threads` (0: the default).
static THREADS: AtomicUsize = AtomicUsize::new(0);

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last failed call on this thread ("" if none); valid
/// until the next call on this thread.
#[no_mangle]
pub extern "C" fn tdl_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// What ran each kernel of the last successful call on this thread ("" if
/// none): one line per kernel, `name<TAB>kind<TAB>executor`, where the
/// executor is `cpu (AOT)` for the artifact's compiled code and
/// `interpreter` for the runtime's Kernel IR executor loops. Valid until
/// the next call on this thread.
#[no_mangle]
pub extern "C" fn tdl_last_run_report() -> *const c_char {
    LAST_REPORT.with(|e| e.borrow().as_ptr())
}

/// Sets the worker threads of later calls; `n <= 0` restores the default
/// (`TDL_THREADS`, else every core).
#[no_mangle]
pub extern "C" fn tdl_set_threads(n: i32) {
    THREADS.store(usize::try_from(n).unwrap_or(0), Ordering::Relaxed);
}

/// A slice from a C array (empty when `n == 0`, whatever the pointer).
///
/// # Safety
/// When `n > 0`, `p` must point to `n` readable elements.
unsafe fn slice<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], String> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(format!("{what} is a null pointer"));
    }
    // SAFETY: non-null, and the caller guarantees `n` elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Runs one graph of an artifact; called by the generated entry points.
/// Returns 0 on success, 1 on an error (see [`tdl_last_error`]).
///
/// # Safety
/// `desc`/`functions` are the descriptor and function table the compiler
/// wrote into the artifact (static data); `dims` has `n_dims` values;
/// `inputs`/`input_lens` have `n_inputs` entries, each input pointing to
/// `input_lens[i]` elements (likewise the outputs, writable).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tdl_rt_run(
    desc: *const u8,
    desc_len: usize,
    functions: *const usize,
    n_functions: usize,
    dims: *const i64,
    n_dims: usize,
    inputs: *const *const c_void,
    input_lens: *const usize,
    n_inputs: usize,
    outputs: *const *mut c_void,
    output_lens: *const usize,
    n_outputs: usize,
) -> i32 {
    let result = std::panic::catch_unwind(|| -> Result<String, String> {
        // SAFETY: the generated entry passes its static descriptor and table.
        let desc: &'static [u8] = unsafe { slice(desc, desc_len, "the descriptor")? };
        let functions = unsafe { slice(functions, n_functions, "the function table")? };
        // SAFETY: the caller's arrays, as the header documents them.
        let dims = unsafe { slice(dims, n_dims, "dims")? };
        let ins = unsafe { slice(inputs, n_inputs, "inputs")? };
        let in_lens = unsafe { slice(input_lens, n_inputs, "input_lens")? };
        let outs = unsafe { slice(outputs, n_outputs, "outputs")? };
        let out_lens = unsafe { slice(output_lens, n_outputs, "output_lens")? };
        let ins: Vec<RawBuf> = ins.iter().zip(in_lens).map(|(&p, &len)| RawBuf { ptr: p as usize, len }).collect();
        let outs: Vec<RawBuf> = outs.iter().zip(out_lens).map(|(&p, &len)| RawBuf { ptr: p as usize, len }).collect();
        let threads = match THREADS.load(Ordering::Relaxed) {
            0 => aot::default_threads(),
            n => n,
        };
        // SAFETY: forwarded from this function's contract.
        let runs = unsafe { aot::run(desc, functions, dims, &ins, &outs, threads) }.map_err(|e| e.to_string())?;
        Ok(runs.iter().map(|k| format!("{}\t{}\t{}\n", k.name, k.kind, k.executor)).collect())
    });
    match result {
        Ok(Ok(report)) => {
            set_error("");
            let c = CString::new(report.replace('\0', " ")).unwrap_or_default();
            LAST_REPORT.with(|e| *e.borrow_mut() = c);
            0
        }
        Ok(Err(message)) => {
            set_error(&message);
            1
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            set_error(&format!("internal error in the tdlc runtime: {what}"));
            1
        }
    }
}
