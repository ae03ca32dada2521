//! `nova-rpc mount DIR`: tasks as files, over the gateway's tasks API (FUSE).
//!
//! ```text
//! DIR/ctl            write a JSON task to submit it; read: the last id submitted here
//! DIR/<id>/status    queued, running, succeeded, failed or killed
//! DIR/<id>/stdout    the output's tail (read again for more)
//! DIR/<id>/stderr
//! DIR/<id>/info      the whole task as JSON
//! DIR/<id>/ctl       write `kill` to kill it
//! ```
//!
//! `ls DIR` lists the tasks. Files are read straight from the gateway on
//! every read (no page cache), so a task's files follow it as it runs. A
//! task is submitted as soon as what was written to `ctl` is a whole JSON
//! object, and a refusal is the write's error (EINVAL for a bad or refused
//! task, EACCES when the token is refused, EIO when the gateway cannot be
//! reached).

use std::{
    collections::HashMap,
    ffi::OsStr,
    time::{Duration, SystemTime},
};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, TimeOrNow,
};
use serde::Deserialize;

use super::tasks_api::{ApiFailure, NewTask, TasksApi};

const ROOT: u64 = 1;
const ROOT_CTL: u64 = 2;
/// Task `n` (from 0) is directory `FIRST + n * STRIDE`, its files after it.
const FIRST: u64 = 16;
const STRIDE: u64 = 8;
const FILES: [&str; 5] = ["status", "stdout", "stderr", "info", "ctl"];
/// Attributes may be cached this long; contents never are.
const TTL: Duration = Duration::from_millis(200);

/// A task written to `DIR/ctl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    task_id: Option<String>,
    callback_url: Option<String>,
}

/// The filesystem; see the module docs.
pub struct TaskFs {
    api: TasksApi,
    rt: tokio::runtime::Handle,
    ids: Vec<String>,
    inodes: HashMap<String, u64>,
    /// What is being written to a `ctl` file, by file handle.
    writes: HashMap<u64, Vec<u8>>,
    next_fh: u64,
    last_submitted: String,
    uid: u32,
    gid: u32,
}

impl std::fmt::Debug for TaskFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFs").field("tasks", &self.ids.len()).finish()
    }
}

impl TaskFs {
    /// Tasks of `api`, calls run on `rt`, files owned by `uid`:`gid`.
    pub fn new(api: TasksApi, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self {
            api,
            rt,
            ids: Vec::new(),
            inodes: HashMap::new(),
            writes: HashMap::new(),
            next_fh: 1,
            last_submitted: String::new(),
            uid,
            gid,
        }
    }

    fn dir_of(&mut self, id: &str) -> u64 {
        if let Some(ino) = self.inodes.get(id) {
            return *ino;
        }
        let ino = FIRST + self.ids.len() as u64 * STRIDE;
        self.ids.push(id.to_owned());
        self.inodes.insert(id.to_owned(), ino);
        ino
    }

    /// `(task id, file index)` of a task inode (`None` for its directory).
    fn task_of(&self, ino: u64) -> Option<(&str, Option<usize>)> {
        let n = ino.checked_sub(FIRST)?;
        let id = self.ids.get(usize::try_from(n / STRIDE).ok()?)?;
        match n % STRIDE {
            0 => Some((id, None)),
            k if (k as usize) <= FILES.len() => Some((id, Some(k as usize - 1))),
            _ => None,
        }
    }

    fn attr(&self, ino: u64, kind: FileType, size: u64) -> FileAttr {
        let now = SystemTime::now();
        let perm = match (kind, ino) {
            (FileType::Directory, _) => 0o755,
            (_, ROOT_CTL) => 0o644,
            _ if self.task_of(ino).is_some_and(|(_, f)| f == Some(4)) => 0o200,
            _ => 0o444,
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// What a file holds now.
    fn content(&self, ino: u64) -> Result<Vec<u8>, i32> {
        if ino == ROOT_CTL {
            return Ok(if self.last_submitted.is_empty() {
                Vec::new()
            } else {
                format!("{}\n", self.last_submitted).into_bytes()
            });
        }
        let Some((id, Some(file))) = self.task_of(ino) else { return Err(EISDIR) };
        if FILES[file] == "ctl" {
            return Ok(Vec::new());
        }
        let task = self.rt.block_on(self.api.show(id)).map_err(errno)?;
        Ok(match FILES[file] {
            "status" => format!("{}\n", task.status.as_str()).into_bytes(),
            "stdout" => task.stdout.into_bytes(),
            "stderr" => task.stderr.into_bytes(),
            _ => serde_json::to_vec_pretty(&task).unwrap_or_default(),
        })
    }

    fn submit(&mut self, body: &[u8]) -> Result<(), i32> {
        let w: Written = serde_json::from_slice(body).map_err(|e| {
            tracing::warn!(error = %e, "not a task: a JSON object with name, args, task_id, callback_url");
            EINVAL
        })?;
        let new = NewTask { name: w.name, args: w.args, task_id: w.task_id, callback_url: w.callback_url };
        let task = self.rt.block_on(self.api.submit(&new)).map_err(|e| {
            tracing::warn!(error = %e, "submitting a task failed");
            errno(e)
        })?;
        self.dir_of(&task.task_id);
        self.last_submitted = task.task_id;
        Ok(())
    }
}

const ENOENT: i32 = 2;
const EIO: i32 = 5;
const EACCES: i32 = 13;
const EINVAL: i32 = 22;
const ENOTDIR: i32 = 20;
const EISDIR: i32 = 21;

fn errno(e: ApiFailure) -> i32 {
    match e {
        ApiFailure::Refused { status: 404, .. } => ENOENT,
        ApiFailure::Refused { status: 401 | 403, .. } => EACCES,
        ApiFailure::Refused { .. } => EINVAL,
        ApiFailure::Unreachable(_) => EIO,
    }
}

impl Filesystem for TaskFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else { return reply.error(ENOENT) };
        if parent == ROOT {
            if name == "ctl" {
                let size = self.content(ROOT_CTL).map_or(0, |c| c.len() as u64);
                return reply.entry(&TTL, &self.attr(ROOT_CTL, FileType::RegularFile, size), 0);
            }
            return match self.rt.block_on(self.api.show(name)) {
                Ok(t) => {
                    let ino = self.dir_of(&t.task_id);
                    reply.entry(&TTL, &self.attr(ino, FileType::Directory, 0), 0)
                }
                Err(e) => reply.error(errno(e)),
            };
        }
        match (self.task_of(parent), FILES.iter().position(|f| *f == name)) {
            (Some((_, None)), Some(k)) => {
                let ino = parent + 1 + k as u64;
                let size = self.content(ino).map_or(0, |c| c.len() as u64);
                reply.entry(&TTL, &self.attr(ino, FileType::RegularFile, size), 0)
            }
            (Some((_, None)), None) => reply.error(ENOENT),
            _ => reply.error(ENOTDIR),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        if ino == ROOT {
            return reply.attr(&TTL, &self.attr(ROOT, FileType::Directory, 0));
        }
        match self.task_of(ino) {
            Some((_, None)) => reply.attr(&TTL, &self.attr(ino, FileType::Directory, 0)),
            _ if ino == ROOT_CTL || self.task_of(ino).is_some() => match self.content(ino) {
                Ok(c) => reply.attr(&TTL, &self.attr(ino, FileType::RegularFile, c.len() as u64)),
                Err(e) => reply.error(e),
            },
            _ => reply.error(ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // Truncating a ctl file (`>`) is how a write starts: nothing to do.
        self.getattr(_req, ino, None, reply);
    }

    fn open(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        let fh = self.next_fh;
        self.next_fh += 1;
        // Direct I/O: every read comes here, so the files follow the task.
        reply.opened(fh, fuser::consts::FOPEN_DIRECT_IO);
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        match self.content(ino) {
            Ok(c) => {
                let start = usize::try_from(offset.max(0)).unwrap_or(usize::MAX).min(c.len());
                let end = start.saturating_add(size as usize).min(c.len());
                reply.data(&c[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let is_ctl = ino == ROOT_CTL || self.task_of(ino).is_some_and(|(_, f)| f == Some(4));
        if !is_ctl {
            return reply.error(EACCES);
        }
        let mut buf = self.writes.remove(&fh).unwrap_or_default();
        buf.extend_from_slice(data);
        // Acted on as soon as what was written is whole, so an error is the
        // write's own (a close's error is lost by most writers).
        let done = if ino == ROOT_CTL {
            match serde_json::from_slice::<serde_json::Value>(&buf) {
                Ok(_) => self.submit(&buf),
                Err(e) if e.is_eof() => {
                    self.writes.insert(fh, buf);
                    Ok(())
                }
                Err(_) => Err(EINVAL),
            }
        } else {
            let said = String::from_utf8_lossy(&buf).trim().to_owned();
            match self.task_of(ino).map(|(id, _)| id.to_owned()) {
                Some(id) if said == "kill" => self.rt.block_on(self.api.kill(&id)).map(|_| ()).map_err(errno),
                Some(_) if "kill".starts_with(&said) => {
                    self.writes.insert(fh, buf);
                    Ok(())
                }
                _ => Err(EINVAL),
            }
        };
        match done {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _lock: u64, reply: ReplyEmpty) {
        // Closed with half a task written: it is refused.
        match self.writes.remove(&fh).filter(|b| !b.iter().all(u8::is_ascii_whitespace)) {
            Some(_) => reply.error(EINVAL),
            None => reply.ok(),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let mut entries: Vec<(u64, FileType, String)> =
            vec![(ino, FileType::Directory, ".".into()), (ROOT, FileType::Directory, "..".into())];
        if ino == ROOT {
            entries.push((ROOT_CTL, FileType::RegularFile, "ctl".into()));
            match self.rt.block_on(self.api.list(None, None)) {
                Ok(tasks) => {
                    for t in tasks {
                        let dir = self.dir_of(&t.task_id);
                        entries.push((dir, FileType::Directory, t.task_id));
                    }
                }
                Err(e) => return reply.error(errno(e)),
            }
        } else if let Some((_, None)) = self.task_of(ino) {
            for (k, f) in FILES.iter().enumerate() {
                entries.push((ino + 1 + k as u64, FileType::RegularFile, (*f).to_owned()));
            }
        } else {
            return reply.error(ENOTDIR);
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(usize::try_from(offset).unwrap_or(0)) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mount the tasks of `api` on `dir` until Ctrl-C or SIGTERM, then unmount.
pub async fn mount(api: TasksApi, dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir)?;
    let fs = TaskFs::new(api, tokio::runtime::Handle::current(), owner.uid(), owner.gid());
    let options = [fuser::MountOption::FSName("nova-tasks".into()), fuser::MountOption::DefaultPermissions];
    let session = fuser::spawn_mount2(fs, dir, &options)?;
    tracing::info!(dir = %dir.display(), "tasks mounted; Ctrl-C or SIGTERM unmounts");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Dropping the session unmounts; its thread may be blocked in a call on
    // this runtime, so it is dropped off it.
    tokio::task::spawn_blocking(move || drop(session)).await.map_err(std::io::Error::other)?;
    tracing::info!(dir = %dir.display(), "unmounted");
    Ok(())
}
