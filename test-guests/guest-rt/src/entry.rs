//! Boot code: the PVH note, the 32-bit PVH entry, the 64-bit entry, the
//! guest's own GDT and identity page tables, and the real-mode AP trampoline.
//!
//! Both entries converge on `common64`, which switches to the guest's own
//! GDT, page tables (first 4 GiB identity-mapped with 2 MiB pages) and stack,
//! clears `.bss` and calls [`crate::rt_start`]. Application processors run the
//! trampoline (copied below 1 MiB by [`crate::smp`]), go straight from real
//! mode to long mode with the same tables and call [`crate::smp`]'s AP entry.

use core::arch::global_asm;

/// Size of the boot processor's stack.
pub const BSP_STACK_SIZE: usize = 64 * 1024;
/// Size of each application processor's stack.
pub const AP_STACK_SIZE: usize = 16 * 1024;
/// Most CPUs a guest can bring up (BSP included).
pub const MAX_CPUS: usize = 16;

global_asm!(
    r#"
    /* PVH: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen", 32-bit entry address. */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_entry32

    /* GDT: null, code64 0x08, data 0x10, code32 0x18 (as in platform.md). */
    .section .rodata.gdt, "a"
    .p2align 4
    .global guest_rt_gdt
guest_rt_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
guest_rt_gdt_end:
    .p2align 4
    .global guest_rt_gdt_ptr
guest_rt_gdt_ptr:
    .word guest_rt_gdt_end - guest_rt_gdt - 1
    .quad guest_rt_gdt

    /* Identity map of the first 4 GiB, 2 MiB pages, built at link time. */
    .section .data.pagetables, "aw"
    .p2align 12
    .global guest_rt_pml4
guest_rt_pml4:
    .quad guest_rt_pdpt + 0x3
    .fill 511, 8, 0
guest_rt_pdpt:
    .quad guest_rt_pd + 0x3
    .quad guest_rt_pd + 0x1000 + 0x3
    .quad guest_rt_pd + 0x2000 + 0x3
    .quad guest_rt_pd + 0x3000 + 0x3
    .fill 508, 8, 0
guest_rt_pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x83
    .set page, page + 1
    .endr

    /* What the loader passed (guest_rt::bootinfo): RSI at the 64-bit
       entry (the zero page), EBX at the PVH entry (hvm_start_info). In
       .data, not .bss: stored before .bss is cleared. */
    .section .data.bootinfo, "aw"
    .p2align 3
    .global guest_rt_zero_page
guest_rt_zero_page:
    .quad 0
    .global guest_rt_pvh_start_info
guest_rt_pvh_start_info:
    .quad 0

    .section .stack, "aw", @nobits
    .p2align 12
guest_rt_bsp_stack:
    .skip {bsp_stack}
guest_rt_bsp_stack_top:
    .global guest_rt_ap_stacks
guest_rt_ap_stacks:
    .skip {ap_stack} * ({max_cpus} - 1)

    .section .text.entry, "ax"
    /* 64-bit entry (ELF e_entry): used by Bulkhead. */
    .code64
    .global _start
_start:
    cli
    movq %rsi, guest_rt_zero_page(%rip)
    jmp common64

    /* 32-bit protected-mode entry, paging off: used by PVH loaders (QEMU). */
    .code32
pvh_entry32:
    cli
    movl %ebx, guest_rt_pvh_start_info
    lgdt guest_rt_gdt_ptr
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %cr4, %eax
    orl $0x620, %eax              /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $guest_rt_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx        /* EFER */
    rdmsr
    orl $0x100, %eax              /* LME */
    wrmsr
    movl %cr0, %eax
    andl $0xfffffffb, %eax        /* clear EM */
    orl $0x80000033, %eax         /* PG | NE | ET | MP | PE */
    movl %eax, %cr0
    ljmp $0x08, $common64

    .code64
common64:
    lgdt guest_rt_gdt_ptr
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movq %cr4, %rax
    orq $0x620, %rax
    movq %rax, %cr4
    movq $guest_rt_pml4, %rax
    movq %rax, %cr3
    movq $guest_rt_bsp_stack_top, %rsp
    xorl %ebp, %ebp
    movq $__bss_start, %rdi       /* link.ld aligns both ends to 16 */
    movq $__bss_end, %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    cld
    rep stosq
    call guest_rt_start
1:
    cli
    hlt
    jmp 1b

    /* Application processor trampoline, copied to AP_TRAMPOLINE_ADDR. */
    .section .rodata.trampoline, "a"
    .global guest_rt_trampoline_start
    .global guest_rt_trampoline_end
    .code16
guest_rt_trampoline_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl ({tramp} + tramp_gdt_ptr - guest_rt_trampoline_start)
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    movl $guest_rt_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    andl $0xfffffffb, %eax
    orl $0x80000033, %eax
    movl %eax, %cr0
    ljmpl $0x08, $guest_rt_ap_entry64
    .p2align 3
tramp_gdt_ptr:
    .word guest_rt_gdt_end - guest_rt_gdt - 1
    .long guest_rt_gdt
guest_rt_trampoline_end:

    .text
    .code64
guest_rt_ap_entry64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    lgdt guest_rt_gdt_ptr
    movq guest_rt_ap_stack_top, %rsp
    xorl %ebp, %ebp
    call guest_rt_ap_start
2:
    cli
    hlt
    jmp 2b
"#,
    bsp_stack = const BSP_STACK_SIZE,
    ap_stack = const AP_STACK_SIZE,
    max_cpus = const MAX_CPUS,
    tramp = const crate::smp::AP_TRAMPOLINE_ADDR,
    options(att_syntax)
);
