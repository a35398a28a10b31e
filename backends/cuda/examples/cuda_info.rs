//! Prints the first CUDA device's name, compute capability and driver
//! version, or why there is none: `cargo run -p tdl-cuda --example cuda_info [ORDINAL]`.

use tdl_cuda::Cuda;

fn main() {
    let ordinal = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    match Cuda::open(ordinal) {
        Ok(gpu) => {
            let (major, minor) = gpu.compute_capability();
            let v = gpu.driver_version();
            println!("device {ordinal}: {}", gpu.device_name());
            println!("compute capability: {major}.{minor} (sm_{major}{minor})");
            println!("driver API version: {v} (CUDA {}.{})", v / 1000, v % 1000 / 10);
            println!("max shared memory per block (opt-in): {} bytes", gpu.max_shared_bytes());
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
