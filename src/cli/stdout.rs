//! Printing for the command line that survives a closed pipe:
//! `klaxon audience … | head -1` ends quietly with exit 0 once `head` has
//! what it wants, instead of panicking on a broken pipe.

use std::io::Write;

/// Writes to stdout; a reader that went away ends the process with 0, any
/// other write error with 1 and one line on stderr.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that exits quietly on a broken pipe.
macro_rules! outln {
    () => { $crate::cli::stdout::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::stdout::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that exits quietly on a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::stdout::write(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};
