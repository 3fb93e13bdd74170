//! Windows: sets the `Administrator` password with `NetUserSetInfo` (level
//! 1003). Compiled only for Windows targets; NOT built or tested on the Linux
//! machines this project is developed and tested on (see docs/agent.md).
#![allow(unsafe_code)]

use secrecy::{ExposeSecret, SecretString};
use windows_sys::Win32::NetworkManagement::NetManagement::{NetUserSetInfo, USER_INFO_1003};
use zeroize::Zeroize;

pub fn set_password(user: &str, password: &SecretString) -> Result<(), String> {
    let mut name: Vec<u16> = user.encode_utf16().chain(Some(0)).collect();
    let mut pw: Vec<u16> = password
        .expose_secret()
        .encode_utf16()
        .chain(Some(0))
        .collect();
    let info = USER_INFO_1003 {
        usri1003_password: pw.as_mut_ptr(),
    };
    let mut parm_err: u32 = 0;
    // SAFETY: `name` and `pw` are NUL-terminated UTF-16 buffers that outlive
    // the call; `info` points at `pw`; a null server name means this machine.
    let status = unsafe {
        NetUserSetInfo(
            std::ptr::null(),
            name.as_ptr(),
            1003,
            &info as *const USER_INFO_1003 as *const u8,
            &mut parm_err,
        )
    };
    pw.zeroize();
    name.zeroize();
    if status == 0 {
        Ok(())
    } else {
        Err(format!("NetUserSetInfo failed with status {status}"))
    }
}
