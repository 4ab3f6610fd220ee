//! The guest booted when the broker passes no kernel (the `hello` test
//! guest, built by this crate's build script and embedded), and a tiny ELF
//! builder for hand-assembled 64-bit guests (used by tests).

/// Guest-physical load address of [`elf_from_code`] images.
pub const LOAD_ADDR: u64 = crate::layout::HIMEM_START;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Wraps 64-bit `code` in a minimal ELF executable: one PT_LOAD segment at
/// [`LOAD_ADDR`] holding the headers and the code; the entry is the first
/// byte of `code`.
pub fn elf_from_code(code: &[u8]) -> Vec<u8> {
    let code_off = (EHDR_SIZE + PHDR_SIZE) as u64;
    let total = code_off + code.len() as u64;
    let mut v = Vec::with_capacity(total as usize);
    v.extend_from_slice(b"\x7fELF");
    v.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(LOAD_ADDR + code_off).to_le_bytes()); // e_entry
    v.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    v.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    v.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    v.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    v.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    v.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    v.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    v.extend_from_slice(&7u32.to_le_bytes()); // RWX
    v.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    v.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    v.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    v.extend_from_slice(&total.to_le_bytes()); // p_filesz
    v.extend_from_slice(&total.to_le_bytes()); // p_memsz
    v.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    v.extend_from_slice(code);
    v
}

/// Code that prints the NUL-terminated `msg` on COM1, writes `exit_code`
/// to the debug-exit port and halts.
pub fn print_and_exit_code(msg: &str, exit_code: u8) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    c.extend_from_slice(&[0x48, 0x8d, 0x35]); // lea rsi, [rip + disp32]
    c.extend_from_slice(&18i32.to_le_bytes()); // msg follows the code below
    c.extend_from_slice(&[
        0xac, // lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp lodsb
        0x66, 0xba, 0xf4, 0x00, // done: mov dx, 0xf4
        0xb0, exit_code, // mov al, exit_code
        0xee,      // out dx, al
        0xf4,      // hlt
        0xeb, 0xfd, // jmp hlt
    ]);
    c.extend_from_slice(msg.as_bytes());
    c.push(0);
    c
}

static HELLO: &[u8] = include_bytes!(env!("BULKHEAD_HELLO_GUEST"));

/// The default guest image.
pub fn hello() -> &'static [u8] {
    HELLO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_hello_is_an_elf() {
        assert_eq!(&hello()[..4], b"\x7fELF");
    }

    #[test]
    fn elf_header_names_entry_after_headers() {
        let elf = elf_from_code(&[0xf4]);
        assert_eq!(&elf[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, LOAD_ADDR + 120);
        assert_eq!(elf[120], 0xf4);
    }

    #[test]
    fn message_starts_where_lea_points() {
        let code = print_and_exit_code("A", 7);
        // lea ends at offset 11; displacement 18 lands on the message.
        assert_eq!(code[11 + 18], b'A');
        assert_eq!(code[11 + 13], 7);
    }
}
