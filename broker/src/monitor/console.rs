//! One human monitor session: QEMU's banner and `(qemu) ` prompt, the
//! line editor, and each entered line run through `human-monitor-command`
//! (`commands/hmp.rs`), so the readline monitor and `qmp-shell -H` print
//! the same texts.

use std::io::Write;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::readline::LineEditor;
use crate::machine::start_gate::START_WAIT;
use crate::machine::Machine;
use crate::qmp::registry::{Ctx, MessageFds, Registry, SessionState};

/// The prompt (QEMU's).
pub const PROMPT: &str = "(qemu) ";

/// QEMU's banner, naming bulkhead as `-version` does (`QEMU 10.0.0
/// (bulkhead 0.1.0) monitor - ...`): tools that look for QEMU's banner
/// find it, and a person sees what answers.
pub fn banner() -> String {
    let (a, b, c) = crate::qmp::wire::QEMU_VERSION;
    format!(
        "QEMU {a}.{b}.{c} ({}) monitor - type 'help' for more information\r\n",
        crate::qmp::wire::PACKAGE
    )
}

/// A human monitor talking to one terminal or client.
pub struct Console {
    editor: LineEditor,
    machine: Arc<Machine>,
    registry: Registry,
    session: SessionState,
}

impl Console {
    /// A session on `machine`.
    pub fn new(machine: Arc<Machine>) -> Self {
        Console {
            editor: LineEditor::new(),
            machine,
            registry: crate::commands::registry(),
            session: SessionState::default(),
        }
    }

    /// Prints the prompt (a fresh line is being edited from here on).
    pub fn show_prompt(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        self.editor.prompt_shown();
        out.write_all(PROMPT.as_bytes())?;
        out.flush()
    }

    /// Handles input bytes: edits, echoes, and runs each completed line
    /// (its echo is written before the command runs, its text after).
    pub fn input(&mut self, bytes: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
        for b in bytes {
            let mut echo = Vec::new();
            let line = self.editor.feed(*b, &mut echo);
            out.write_all(&echo)?;
            out.flush()?;
            if let Some(line) = line {
                let text = self.run(&line);
                out.write_all(text.as_bytes())?;
                // After `quit` the broker is ending: no prompt, as QEMU.
                let quit = matches!(line.split_whitespace().next(), Some("quit" | "q"));
                if !(quit && text.is_empty()) {
                    self.show_prompt(out)?;
                } else {
                    out.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Runs one HMP line; its text with QEMU's `\r\n` line ends.
    fn run(&self, line: &str) -> String {
        if line.trim().is_empty() {
            return String::new();
        }
        // As through QMP: the commands need the workers up.
        if let Err(e) = self.machine.start_gate().wait(START_WAIT) {
            return format!("Error: {}\r\n", e.desc);
        }
        let Some(entry) = self.registry.get("human-monitor-command") else {
            return "Error: internal: no human-monitor-command\r\n".into();
        };
        let fds = MessageFds::default();
        let ctx = Ctx {
            machine: &self.machine,
            session: &self.session,
            registry: &self.registry,
            fds: &fds,
        };
        let mut args = Map::new();
        args.insert("command-line".into(), Value::String(line.to_owned()));
        match entry.call(args, &ctx) {
            Ok(Value::String(text)) => text,
            Ok(other) => format!("{other}\r\n"),
            Err(e) => format!("Error: {}\r\n", e.desc),
        }
    }
}
