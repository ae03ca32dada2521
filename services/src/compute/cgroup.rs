//! A cgroup per task, where the unified (v2) hierarchy is mounted and this
//! process may write its own part of it: every process a task starts stays
//! in the task's cgroup whatever session or group it makes, and whatever it
//! does to its environment, so ending the task ends all of them
//! (`cgroup.kill`). Where there is no such cgroup, compute falls back on
//! being its tasks' child subreaper ([`super::tasks::become_subreaper`]).
//!
//! The cgroups live under `<this process's cgroup>/nova-tasks-<pid>/`,
//! one per task, named by the task's id. No controller is enabled: the
//! cgroups only hold processes together.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

/// Where this process makes its tasks' cgroups; see the module docs.
#[derive(Debug)]
pub struct TaskCgroups {
    base: PathBuf,
}

/// The mount point of the unified hierarchy, from `/proc/self/mountinfo`.
fn unified_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options… - fstype source options
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2"))
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// This process's cgroup in the unified hierarchy (`0::/path`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// A task id as a directory name: nothing but `[A-Za-z0-9_.-]`, never `.` or `..`.
fn dir_name(task_id: &str) -> String {
    let name: String =
        task_id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') { c } else { '_' }).collect();
    format!("task-{name}")
}

impl TaskCgroups {
    /// The cgroups of this process's tasks, if the unified hierarchy lets it
    /// make them; `None` (said once in the log) otherwise.
    pub fn detect() -> Option<Self> {
        let found = unified_mount().zip(own_cgroup()).map(|(mount, own)| {
            mount.join(own.trim_start_matches('/')).join(format!("nova-tasks-{}", std::process::id()))
        });
        let Some(base) = found else {
            tracing::info!(
                "no cgroup v2 hierarchy: a task's processes are held together by its process group and the subreaper"
            );
            return None;
        };
        if let Some(parent) = base.parent() {
            remove_stale(parent);
        }
        match std::fs::create_dir_all(&base) {
            Ok(()) => {
                tracing::info!(cgroup = %base.display(), "each task runs in a cgroup of its own");
                Some(Self { base })
            }
            Err(e) => {
                tracing::info!(cgroup = %base.display(), error = %e, "cannot make task cgroups: a task's processes are held together by its process group and the subreaper");
                None
            }
        }
    }

    /// Make the cgroup of `task_id`; its directory, whose `cgroup.procs` the
    /// task's first process writes itself into before anything else runs.
    pub fn create(&self, task_id: &str) -> std::io::Result<PathBuf> {
        let dir = self.base.join(dir_name(task_id));
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(dir),
        }
    }

    /// `line` started so that its first process joins cgroup `dir` and only
    /// then becomes the task: `sh -c 'echo $$ > DIR/cgroup.procs && exec "$@"'`.
    pub fn wrap(dir: &Path, line: Vec<String>) -> Vec<String> {
        let mut out: Vec<String> =
            ["/bin/sh", "-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#].map(String::from).into();
        out.push(dir.display().to_string());
        out.extend(line);
        out
    }

    /// Kill every process in cgroup `dir` and remove it, waiting up to a
    /// second for the processes to be gone. Those this process adopted
    /// (its tasks' orphans, see [`super::tasks::become_subreaper`]) are
    /// reaped; `leader`, the task's first process, is its runner's to reap.
    pub async fn end(dir: &Path, leader: i32) {
        let procs = dir.join("cgroup.procs");
        let members: Vec<i32> =
            std::fs::read_to_string(&procs).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect();
        let kill_all = || match std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.kill")) {
            Ok(mut f) => f.write_all(b"1").is_ok(),
            Err(_) => false,
        };
        if !kill_all() {
            // Before Linux 5.14 there is no cgroup.kill: each process in turn.
            for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines().filter_map(|l| l.parse().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        for _ in 0..100 {
            if std::fs::read_to_string(&procs).map_or(true, |p| p.trim().is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let me = std::process::id().to_string();
        for pid in members.into_iter().filter(|p| *p != leader) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent =
                stat.rfind(')').and_then(|i| stat.get(i + 2..)).and_then(|rest| rest.split_whitespace().nth(1));
            if parent == Some(me.as_str()) {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a task's cgroup");
        }
    }
}

/// Remove the empty task cgroups of processes that are gone (killed before
/// they could remove their own).
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("nova-tasks-")) else { continue };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        if let Ok(tasks) = std::fs::read_dir(entry.path()) {
            for task in tasks.flatten().filter(|t| t.path().is_dir()) {
                let _ = std::fs::remove_dir(task.path());
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

impl Drop for TaskCgroups {
    fn drop(&mut self) {
        // Empty once every task has ended.
        let _ = std::fs::remove_dir(&self.base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_make_plain_directory_names() {
        assert_eq!(dir_name("job-1.2"), "task-job-1_2");
        assert_eq!(dir_name("../etc"), "task-___etc");
        assert_eq!(dir_name(".."), "task-__");
    }
}
