//! The `process_*` metrics every Prometheus exporter is expected to have, read
//! from `/proc/self` at scrape time (Linux): CPU, memory, descriptors, start.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// Reads `/proc/self` when scraped; registered once in the default registry.
pub struct ProcessCollector {
    cpu_seconds: Counter,
    resident_bytes: IntGauge,
    virtual_bytes: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::with_opts(Opts::new(name, help)).expect("valid metric definition")
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).expect("valid metric definition")
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        let cpu_seconds = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("valid metric definition");
        let resident_bytes = int_gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_bytes = int_gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = int_gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = int_gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let descs = [
            cpu_seconds.desc(),
            resident_bytes.desc(),
            virtual_bytes.desc(),
            open_fds.desc(),
            max_fds.desc(),
            start_time.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        ProcessCollector {
            cpu_seconds,
            resident_bytes,
            virtual_bytes,
            open_fds,
            max_fds,
            start_time,
            descs,
        }
    }

    /// Reads `/proc/self` into the gauges; a value that cannot be read keeps
    /// its last one (scraping must never fail for it).
    fn refresh(&self) {
        let ticks = clock_ticks();
        if let Some(stat) = read_stat() {
            // A counter only goes up: it is moved to the kernel's total.
            let total = (stat.utime + stat.stime) as f64 / ticks;
            let delta = total - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
            self.virtual_bytes.set(stat.vsize as i64);
            self.resident_bytes.set(stat.rss_pages as i64 * page_size());
            if let Some(boot) = boot_time() {
                self.start_time
                    .set(boot as f64 + stat.start_ticks as f64 / ticks);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(max) = max_open_files() {
            self.max_fds.set(max);
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        [
            self.cpu_seconds.collect(),
            self.resident_bytes.collect(),
            self.virtual_bytes.collect(),
            self.open_fds.collect(),
            self.max_fds.collect(),
            self.start_time.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The fields of `/proc/self/stat` these metrics use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

fn read_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Parses `/proc/[pid]/stat` (proc(5)): fields after the `(comm)`, which may
/// itself hold spaces and parentheses, so the split starts at its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first here; field N is at index N - 3.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// Boot time in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files (`Max open files` of `/proc/self/limits`).
fn max_open_files() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn page_size() -> i64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as i64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 25 0 0 20 0 3 0 777 104857600 2560 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 150,
                stime: 25,
                start_ticks: 777,
                vsize: 104_857_600,
                rss_pages: 2560,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reads_as_alive() {
        let collector = ProcessCollector::new();
        collector.refresh();
        assert!(collector.resident_bytes.get() > 0);
        assert!(collector.open_fds.get() > 0);
        assert!(collector.max_fds.get() > 0);
        assert!(collector.start_time.get() > 1.6e9);
    }
}
