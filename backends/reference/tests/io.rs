//! `.npy` and `.safetensors` I/O, and `random_tensor` determinism.

use std::path::PathBuf;

use npyz::WriterBuilder;
use tdl_ir::DType;
use tdl_reference::npy::{read_npy, read_npy_as, write_npy};
use tdl_reference::weights::load_safetensors;
use tdl_reference::{random_tensor, IoError, Tensor};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tdl-reference-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_raw<T: npyz::AutoSerialize>(path: &PathBuf, shape: &[u64], fortran: bool, items: Vec<T>) {
    let f = std::fs::File::create(path).unwrap();
    let opts = npyz::WriteOptions::new().default_dtype().shape(shape);
    let opts = if fortran { opts.order(npyz::Order::Fortran) } else { opts.order(npyz::Order::C) };
    let mut w = opts.writer(f).begin_nd().unwrap();
    w.extend(items).unwrap();
    w.finish().unwrap();
}

#[test]
fn npy_round_trip_every_dtype() {
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let t = random_tensor(dtype, &[3, 5, 2], 100 + i as u64);
        let path = tmp(&format!("rt_{dtype}.npy"));
        write_npy(&path, &t).unwrap();
        let back = read_npy_as(&path, dtype).unwrap();
        assert_eq!(back, t, "{dtype}");
        if dtype == DType::BF16 {
            // bf16 is raw <u2 and needs the caller to say bf16.
            let e = read_npy(&path).unwrap_err();
            assert!(matches!(e, IoError::NpyDType { .. }), "{e:?}");
            assert!(e.to_string().contains("read_npy_as"), "{e}");
        } else {
            assert_eq!(read_npy(&path).unwrap(), t, "{dtype}");
        }
    }
    // Values are rounded to the element type on the way out.
    let t = Tensor::new(DType::F16, vec![2], vec![1.0 + 2f64.powi(-12), 70000.0]).unwrap();
    let path = tmp("round.npy");
    write_npy(&path, &t).unwrap();
    assert_eq!(read_npy(&path).unwrap().data, vec![1.0, f64::INFINITY]);
    // A scalar and an empty array.
    for (name, t) in
        [("scalar", Tensor::scalar(DType::F32, 2.5)), ("empty", Tensor::new(DType::I32, vec![0, 4], vec![]).unwrap())]
    {
        let path = tmp(&format!("{name}.npy"));
        write_npy(&path, &t).unwrap();
        assert_eq!(read_npy(&path).unwrap(), t);
    }
}

#[test]
fn npy_bf16_bits_are_raw_u16() {
    // 1.0 in bf16 is 0x3F80; -2.0 is 0xC000.
    let path = tmp("bf16_raw.npy");
    write_raw(&path, &[2], false, vec![0x3F80u16, 0xC000u16]);
    let t = read_npy_as(&path, DType::BF16).unwrap();
    assert_eq!((t.dtype, t.data), (DType::BF16, vec![1.0, -2.0]));
    let e = read_npy_as(&path, DType::F32).unwrap_err();
    assert!(matches!(e, IoError::DTypeMismatch { .. }), "{e:?}");
}

#[test]
fn npy_rejects_f64_i64_and_fortran_order() {
    let path = tmp("f64.npy");
    write_raw(&path, &[2], false, vec![1.0f64, 2.0]);
    let e = read_npy(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IoError::NpyDType { .. }), "{e:?}");
    assert!(
        msg.contains("float64") && msg.contains("<f8") && msg.contains("f32 (<f4)") && msg.contains("bool (|b1)"),
        "{msg}"
    );
    assert!(read_npy_as(&path, DType::F32).is_err());

    let path = tmp("i64.npy");
    write_raw(&path, &[2], false, vec![1i64, 2]);
    let msg = read_npy(&path).unwrap_err().to_string();
    assert!(msg.contains("int64") && msg.contains("i32 (<i4)"), "{msg}");

    let path = tmp("fortran.npy");
    write_raw(&path, &[2, 3], true, vec![1.0f32; 6]);
    let e = read_npy(&path).unwrap_err();
    assert!(matches!(e, IoError::FortranOrder { .. }), "{e:?}");
    assert!(e.to_string().contains("C order"), "{e}");
}

#[test]
fn npy_type_mismatch_truncation_and_garbage() {
    let t = random_tensor(DType::I32, &[4], 7);
    let path = tmp("ids.npy");
    write_npy(&path, &t).unwrap();
    let e = read_npy_as(&path, DType::F32).unwrap_err().to_string();
    assert!(e.contains("expected f32") && e.contains("found i32"), "{e}");
    // Truncated data.
    let bytes = std::fs::read(&path).unwrap();
    let cut = tmp("cut.npy");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let e = read_npy(&cut).unwrap_err();
    assert!(matches!(e, IoError::BadNpy { .. }), "{e:?}");
    // Not an npy file at all, and a missing file.
    let junk = tmp("junk.npy");
    std::fs::write(&junk, b"hello world, not numpy").unwrap();
    assert!(matches!(read_npy(&junk).unwrap_err(), IoError::BadNpy { .. }));
    assert!(matches!(read_npy(tmp("missing.npy")).unwrap_err(), IoError::Io { .. }));
    // A header claiming an absurd shape: an error, no allocation, no panic.
    let mut hostile = b"\x93NUMPY\x01\x00".to_vec();
    let mut header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    hostile.extend((header.len() as u16).to_le_bytes());
    hostile.extend(header.as_bytes());
    let hp = tmp("hostile.npy");
    std::fs::write(&hp, &hostile).unwrap();
    assert!(matches!(read_npy(&hp).unwrap_err(), IoError::BadNpy { .. }));
    // A v2 header claiming a 4 GiB header in a 12-byte file.
    let lying = tmp("lying.npy");
    std::fs::write(&lying, b"\x93NUMPY\x02\x00\xff\xff\xff\xff").unwrap();
    let e = read_npy(&lying).unwrap_err().to_string();
    assert!(e.contains("header claims"), "{e}");
}

#[test]
fn safetensors_round_trip() {
    use safetensors::{tensor::TensorView, Dtype};
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0, 0.0, -0.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f16s: Vec<u8> = [0.5f32, -1.0, 3.0].iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    let bf16s: Vec<u8> = [1.0f32, -2.0].iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
    let i32s: Vec<u8> = [7i32, -3, 2147483647].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bools: Vec<u8> = vec![1, 0, 0, 1];
    let views = vec![
        ("w".to_string(), TensorView::new(Dtype::F32, vec![2, 3], &f32s).unwrap()),
        ("h".to_string(), TensorView::new(Dtype::F16, vec![3], &f16s).unwrap()),
        ("b".to_string(), TensorView::new(Dtype::BF16, vec![2, 1], &bf16s).unwrap()),
        ("ids".to_string(), TensorView::new(Dtype::I32, vec![3], &i32s).unwrap()),
        ("layout".to_string(), TensorView::new(Dtype::BOOL, vec![2, 2], &bools).unwrap()),
    ];
    let bytes = safetensors::serialize(views, None).unwrap();
    let path = tmp("weights.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let w = load_safetensors(&path).unwrap();
    assert_eq!(w.len(), 5);
    assert_eq!(w["w"], Tensor::new(DType::F32, vec![2, 3], vec![1.5, -2.0, 0.25, 8.0, 0.0, -0.5]).unwrap());
    assert_eq!(w["h"], Tensor::new(DType::F16, vec![3], vec![0.5, -1.0, 3.0]).unwrap());
    assert_eq!(w["b"], Tensor::new(DType::BF16, vec![2, 1], vec![1.0, -2.0]).unwrap());
    assert_eq!(w["ids"], Tensor::new(DType::I32, vec![3], vec![7.0, -3.0, 2147483647.0]).unwrap());
    assert_eq!(w["layout"], Tensor::new(DType::Bool, vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]).unwrap());

    // An unsupported element type names the tensor and the type.
    let f64s: Vec<u8> = 1.0f64.to_le_bytes().to_vec();
    let bytes =
        safetensors::serialize(vec![("big".to_string(), TensorView::new(Dtype::F64, vec![1], &f64s).unwrap())], None)
            .unwrap();
    let path = tmp("f64.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let e = load_safetensors(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IoError::SafetensorsDType { .. }), "{e:?}");
    assert!(msg.contains("`big`") && msg.contains("F64") && msg.contains("BF16"), "{msg}");

    // Garbage.
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
    assert!(matches!(load_safetensors(&junk).unwrap_err(), IoError::BadSafetensors { .. }));
}

#[test]
fn random_tensor_is_deterministic() {
    for dtype in DType::ALL {
        let a = random_tensor(dtype, &[4, 33], 42);
        assert_eq!(a, random_tensor(dtype, &[4, 33], 42), "{dtype}");
        assert_ne!(a, random_tensor(dtype, &[4, 33], 43), "{dtype}");
        // Every value is exact in its element type.
        assert_eq!(a.round_to_dtype(), a, "{dtype}");
        match dtype {
            DType::Bool => {
                let ones = a.data.iter().filter(|&&v| v == 1.0).count();
                assert!(a.data.iter().all(|&v| v == 0.0 || v == 1.0));
                assert!((40..=92).contains(&ones), "{ones} of 132");
            }
            DType::I32 => {
                for row in a.data.chunks(33) {
                    assert_eq!(row[0], 0.0);
                    assert!(row.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1.0));
                    assert!(row.iter().all(|&v| (0.0..4.0).contains(&v)));
                }
                assert!(a.data.iter().any(|&v| v > 0.0));
            }
            _ => {
                assert!(a.data.iter().all(|&v| (-1.0..1.0).contains(&v)));
                assert!(a.data.iter().any(|&v| v < -0.5) && a.data.iter().any(|&v| v > 0.5));
            }
        }
    }
    // Pinned values: a seed gives the same tensor forever.
    let golden = random_tensor(DType::F32, &[4], 42);
    assert_eq!(golden.data, GOLDEN_F32_SEED_42);
    let ids = random_tensor(DType::I32, &[12], 42);
    assert_eq!(ids.data, GOLDEN_I32_SEED_42);
}

// Computed independently (a Python SplitMix64): seed 42's first outputs,
// top 24 bits scaled to [-1, 1); ids advancing when `next % 12 < 3`.
const GOLDEN_F32_SEED_42: [f64; 4] =
    [0.48312973976135254, -0.680179238319397, -0.44279778003692627, -0.3116186857223511];
const GOLDEN_I32_SEED_42: [f64; 12] = [0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0];
