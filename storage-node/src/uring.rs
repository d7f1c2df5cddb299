//! A small synchronous wrapper over one io_uring: positional writes and (data) syncs, each
//! submitted and waited for. It is owned by the IO thread; it does no buffering or policy.

use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

/// Submission queue entries; the thread has at most one operation in flight.
const RING_ENTRIES: u32 = 8;

pub(crate) struct Uring {
    ring: IoUring,
}

impl Uring {
    /// Sets up a ring and runs a no-op through it, so a kernel that refuses io_uring (too old,
    /// disabled by sysctl or seccomp) is found at open, not at the first write.
    pub fn new() -> io::Result<Uring> {
        let mut uring = Uring {
            ring: IoUring::new(RING_ENTRIES)?,
        };
        uring.run(opcode::Nop::new().build())?;
        Ok(uring)
    }

    /// Writes all of `buf` at `offset` of `fd`, resubmitting after short writes.
    pub fn write_all_at(&mut self, fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let sqe = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len)
                .offset(offset)
                .build();
            // The buffer outlives the operation: `run` waits for its completion.
            let n = self.run(sqe)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write wrote 0 bytes",
                ));
            }
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset` of `fd`, then `fdatasync(fd)`: one submission of a
    /// linked pair, so a group commit costs one round trip through the ring. A short write
    /// breaks the link (the sync is cancelled); the rest is then written and synced apart.
    pub fn write_all_at_and_fdatasync(
        &mut self,
        fd: RawFd,
        buf: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let write = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        // SAFETY: `buf` outlives both operations: this function waits for both completions.
        unsafe {
            let mut sq = self.ring.submission();
            sq.push(&write)
                .and_then(|()| sq.push(&sync))
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let (mut written, mut synced) = (None, None);
        while written.is_none() || synced.is_none() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                match cqe.user_data() {
                    1 => written = Some(cqe.result()),
                    _ => synced = Some(cqe.result()),
                }
            }
        }
        let written = written.expect("loop ends with both results");
        if written < 0 {
            return Err(io::Error::from_raw_os_error(-written));
        }
        let written = written as usize;
        if written < buf.len() {
            self.write_all_at(fd, &buf[written..], offset + written as u64)?;
            return self.fdatasync(fd);
        }
        match synced.expect("loop ends with both results") {
            res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
            _ => Ok(()),
        }
    }

    /// `fdatasync(fd)`.
    pub fn fdatasync(&mut self, fd: RawFd) -> io::Result<()> {
        let sqe = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.run(sqe).map(drop)
    }

    /// `fsync(fd)`, for directories after a file is created or deleted.
    pub fn fsync(&mut self, fd: RawFd) -> io::Result<()> {
        self.run(opcode::Fsync::new(types::Fd(fd)).build())
            .map(drop)
    }

    /// Submits one entry and waits for its completion; returns its non-negative result.
    fn run(&mut self, sqe: squeue::Entry) -> io::Result<usize> {
        // SAFETY: every pointer in `sqe` refers to memory the caller keeps alive until this
        // function returns, and this function returns only after the completion arrives.
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            if let Some(cqe) = self.ring.completion().next() {
                let res = cqe.result();
                return if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
            }
        }
    }
}
