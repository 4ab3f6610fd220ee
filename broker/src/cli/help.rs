//! The texts `-help`, `-version` and `-machine help`, `-cpu help`,
//! `-accel help` print (QEMU's layout, so tools that parse QEMU's output,
//! such as libvirt's version check, read bulkhead's).

use crate::qmp::wire::{PACKAGE, QEMU_VERSION};

/// `-version`: QEMU's first line (the QEMU version bulkhead's QMP
/// implements, bulkhead's own in parentheses, as distributions do).
pub fn version() -> String {
    let (a, b, c) = QEMU_VERSION;
    format!(
        "QEMU emulator version {a}.{b}.{c} ({PACKAGE})\n\
         bulkhead: a multi-process KVM virtual machine monitor driven through QEMU's QMP\n"
    )
}

/// `-help`: every option bulkhead accepts.
pub fn usage() -> String {
    let mut s = version();
    s.push_str(
        "usage: bulkhead [options]\n\n\
Standard options:\n\
-h or -help     display this help and exit\n\
-version        display version information and exit\n\
-machine [type=]microvm|none[,accel=kvm]  (-M) the machine ('none': no guest, for probing)\n\
-accel kvm      the accelerator (bulkhead has only kvm); -enable-kvm is the same\n\
-cpu host|max|qemu64[,+feat][,-feat]  the CPU model ('-cpu help' lists models and features)\n\
-smp [cpus=]N   number of vCPUs (1 to 64)\n\
-m [size=]SIZE  guest RAM (default 128M)\n\
-name [guest=]NAME[,process=PNAME][,debug-threads=on|off]\n\
-uuid UUID      the machine's UUID (query-uuid)\n\
-S              do not start the vCPUs (prelaunch) until 'cont'\n\
-no-shutdown    a guest shutdown stops the VM instead of ending bulkhead\n\
-no-reboot      a guest reset ends bulkhead\n\
-nodefaults     no default serial port\n\
-no-user-config (bulkhead reads no configuration file)\n\
-overcommit mem-lock=off,cpu-pm=off  (the 'on' settings are refused)\n\
-rtc base=utc[,clock=host]  (the guest has no RTC; other settings are refused)\n\
-boot strict=on,menu=off    (bulkhead boots only -kernel; other settings are refused)\n\n\
Block and devices:\n\
-blockdev OPTIONS  a block node (JSON or dotted keys)\n\
-drive file=PATH,format=raw|qcow2,if=none,id=ID[,readonly=on][,media=cdrom][,cache=...]\n\
-device virtio-blk-device,drive=NODE[,id=ID] | vhost-user-blk,chardev=ID[,id=ID]\n\
-device virtio-scsi-device,id=ID[,num_queues=N]  a SCSI controller (vhost-user-scsi)\n\
-device scsi-cd,id=ID[,drive=NODE][,bus=CTRL.0][,scsi-id=T][,lun=L] | scsi-hd,drive=NODE,id=ID\n\
-chardev socket,id=ID,path=PATH  a vhost-user backend's socket\n\n\
Boot:\n\
-kernel FILE    an ELF (PVH) or bzImage kernel (default: the built-in test guest)\n\
-initrd FILE    an initial ramdisk\n\
-append CMDLINE the kernel command line\n\n\
Display, serial and monitors:\n\
-display none   (bulkhead has no display)\n\
-nographic      serial port and human monitor on stdio (Ctrl-a c switches)\n\
-serial stdio|null|none|pty|mon:stdio|file:PATH|unix:PATH,server=on,wait=off\n\
-serial tcp:[HOST]:PORT[,server=on[,wait=off]]|chardev:ID\n\
-monitor stdio|none|unix:PATH,server=on,wait=off  a human monitor (HMP, readline)\n\
-qmp unix:PATH,server=on,wait=off  a QMP monitor socket (repeatable)\n\n\
Process:\n\
-daemonize      detach once the VM is set up and its sockets exist\n\
-pidfile FILE   write the broker's pid to FILE\n\
-D LOGFILE      write every process's log and messages to LOGFILE\n\
-msg timestamp=on|off  timestamps on log lines and messages\n\
-trace [enable=]PATTERN,events=FILE,file=FILE  enable trace points; where they go\n\
-add-fd fd=N,set=M[,opaque=S]  an inherited fd in fd set M\n\
-run-with user=NAME|UID[:GID]  the identity of the sandboxed workers\n\
-sandbox on|off the workers' sandbox (default on)\n\
-worker-dir DIR where the worker executables are (default: beside bulkhead)\n\
-x-bulkhead-image-dir DIR  a directory tree backing files may be opened from (repeatable)\n\
-__org.bulkhead-worker-timeout SECONDS  hung-worker deadline (default 5)\n",
    );
    s
}

/// `-machine help`.
pub fn machines() -> String {
    let mut s = String::from("Supported machines are:\n");
    for (n, d) in super::qemu_opts::MACHINES {
        s.push_str(&format!("{n:<20} {d}\n"));
    }
    s
}

/// `-cpu help`.
pub fn cpus() -> String {
    let mut s = String::from("Available CPUs:\n");
    for (n, d) in super::cpu::MODELS {
        s.push_str(&format!("  {n:<21} {d}\n"));
    }
    s.push_str("\nRecognized CPUID flags:\n ");
    for f in super::cpu::feature_names() {
        s.push(' ');
        s.push_str(f);
    }
    s.push('\n');
    s
}

/// `-accel help`.
pub fn accels() -> String {
    "Accelerators supported in bulkhead:\nkvm\n".to_owned()
}
