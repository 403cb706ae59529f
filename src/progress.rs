//! Progress of long jobs — `rebuild`, `compact`, `prices import`, `loadgen`, `bench` — in one
//! way: an indicatif bar when standard error is a terminal, a plain line every few seconds
//! otherwise (logs, CI, a pipe), nothing when quiet. Progress goes to standard error, so what
//! a command reports on standard output (its summary) stays clean for scripts.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar's message is recomputed (the bar itself redraws at most 20 times a second).
const MESSAGE_EVERY: Duration = Duration::from_millis(200);

/// One job's progress: `label` (what runs), a position in `unit`s, optionally out of a total.
pub struct Progress {
    label: String,
    unit: &'static str,
    bar: Option<ProgressBar>,
    plain: bool,
    total: Option<u64>,
    pos: u64,
    start: Instant,
    last: Instant,
    every: Duration,
    /// A plain line was printed (a job shorter than `every` ends without any).
    printed: bool,
}

impl Progress {
    /// A bar on a terminal, plain lines every 5 s otherwise; nothing when `quiet`.
    pub fn new(
        label: impl Into<String>,
        unit: &'static str,
        total: Option<u64>,
        quiet: bool,
    ) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let label = label.into();
        let bar = (!quiet && tty).then(|| {
            let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            b.set_style(style(&label, unit, total.is_some()));
            b
        });
        let now = Instant::now();
        Progress {
            label,
            unit,
            bar,
            plain: !quiet && !tty,
            total,
            pos: 0,
            start: now,
            last: now,
            every: Duration::from_secs(5),
            printed: false,
        }
    }

    /// Shows nothing (library callers, tests).
    pub fn hidden() -> Progress {
        Progress::new("", "", None, true)
    }

    /// Plain lines this often instead of every 5 s (short jobs).
    pub fn every(mut self, every: Duration) -> Progress {
        self.every = every;
        self
    }

    /// The total becomes known (or changes).
    pub fn set_total(&mut self, total: u64) {
        if self.total.is_none() {
            if let Some(b) = &self.bar {
                b.set_style(style(&self.label, self.unit, true));
            }
        }
        self.total = Some(total);
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Moves to `pos`; `detail` (rates, counts) is computed only when it is shown.
    pub fn update(&mut self, pos: u64, detail: impl FnOnce() -> String) {
        self.pos = pos;
        if let Some(b) = &self.bar {
            b.set_position(pos);
            if self.last.elapsed() >= MESSAGE_EVERY {
                b.set_message(self.message(&detail()));
                self.last = Instant::now();
            }
        } else if self.plain && self.last.elapsed() >= self.every {
            eprintln!("{}", self.line(&detail()));
            self.last = Instant::now();
            self.printed = true;
        }
    }

    /// Moves on by `n`.
    pub fn inc(&mut self, n: u64) {
        self.update(self.pos + n, String::new);
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// A line of its own (a warning, a phase), above the bar on a terminal.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.println(line.as_ref()),
            None if self.plain => eprintln!("{}", line.as_ref()),
            None => {}
        }
    }

    /// Removes the bar; in plain mode, a last line with where it ended (if it printed any: a
    /// short job stays silent).
    pub fn finish(&self, detail: &str) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        } else if self.plain && self.printed {
            eprintln!("{} (done)", self.line(detail));
        }
    }

    fn rate(&self) -> f64 {
        self.pos as f64 / self.start.elapsed().as_secs_f64().max(1e-3)
    }

    fn message(&self, detail: &str) -> String {
        let rate = format!("{:.0} {}/s", self.rate(), self.unit);
        if detail.is_empty() {
            rate
        } else {
            format!("{rate}  {detail}")
        }
    }

    /// `<label> <elapsed> s  <pos>[/<total> <unit>  <pct> %]  <rate>  <detail>`
    fn line(&self, detail: &str) -> String {
        let at = match self.total {
            Some(t) if t > 0 => format!(
                "{}/{t} {}  {:.0} %",
                self.pos,
                self.unit,
                100.0 * self.pos as f64 / t as f64
            ),
            _ => format!("{} {}", self.pos, self.unit),
        };
        format!(
            "{} {:>7.1} s  {at}  {}",
            self.label,
            self.start.elapsed().as_secs_f64(),
            self.message(detail)
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // an error path that never called finish must not leave a bar drawn over the error
        if let Some(b) = &self.bar {
            if !b.is_finished() {
                b.finish_and_clear();
            }
        }
    }
}

fn style(label: &str, unit: &str, bounded: bool) -> ProgressStyle {
    // `{` in a label or unit would be read as a template key
    let (label, unit) = (label.replace(['{', '}'], ""), unit.replace(['{', '}'], ""));
    let template = if bounded {
        format!("{label} {{elapsed_precise}} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {unit} (eta {{eta}})  {{msg}}")
    } else {
        format!("{label} {{elapsed_precise}} {{spinner}} {{pos}} {unit}  {{msg}}")
    };
    ProgressStyle::with_template(&template)
        .expect("a valid template")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_name_the_job_position_total_and_rate() {
        let mut p = Progress::new("rebuild", "records", Some(200), true);
        p.plain = true; // as if standard error were a file
        p.update(50, String::new);
        let line = p.line("partition 0: 50");
        assert!(line.starts_with("rebuild "), "{line}");
        assert!(line.contains("50/200 records  25 %"), "{line}");
        assert!(line.contains("records/s  partition 0: 50"), "{line}");
        let mut q = Progress::new("compact", "files", None, true);
        q.inc(3);
        q.inc(4);
        assert_eq!(q.position(), 7);
        assert!(q.line("").contains(" 7 files  "), "{}", q.line(""));
    }

    #[test]
    fn templates_with_braces_in_names_are_valid() {
        let _ = style("a{b}", "c}", true);
        let _ = style("x", "y", false);
    }
}
