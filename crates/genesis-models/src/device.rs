//! Device selection from a user-facing string.

use tch::Device;

use crate::{Error, Result};

/// Parses `cpu`, `cuda` (the first GPU), `cuda:N` or `auto` (the first GPU
/// when libtorch sees one, the CPU otherwise). Asking for a CUDA device
/// that does not exist is an error rather than a silent fallback.
pub fn parse_device(s: &str) -> Result<Device> {
    let spec = s.trim().to_ascii_lowercase();
    let index = match spec.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "auto" => return Ok(Device::cuda_if_available()),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => index,
            _ => return Err(Error::InvalidDevice(s.to_string())),
        },
    };
    let available = tch::Cuda::device_count();
    if (index as i64) >= available {
        return Err(Error::DeviceUnavailable {
            requested: s.to_string(),
            available,
        });
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        assert_eq!(parse_device("auto").unwrap(), Device::cuda_if_available());
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(
                matches!(parse_device(bad), Err(Error::InvalidDevice(_))),
                "{bad}"
            );
        }
        let gpus = tch::Cuda::device_count();
        let beyond = format!("cuda:{gpus}");
        assert!(matches!(
            parse_device(&beyond),
            Err(Error::DeviceUnavailable { .. })
        ));
        if gpus > 0 {
            assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        } else {
            assert!(parse_device("cuda").is_err());
        }
    }
}
