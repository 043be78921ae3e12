//! Switching an RS-485 transceiver between sending and receiving, for
//! boards whose adapter does not do it itself (`[[bus]] rs485`).
//!
//! - `kernel`: the kernel's RS-485 mode (TIOCSRS485) drives RTS around each
//!   frame, with optional delays; set once when the port opens.
//! - `rts` and a GPIO pin: fieldmq raises the line before the first byte of
//!   a request and drops it when the last byte has left, computed from the
//!   baud rate: a frame of n bytes written at t has left at t + n character
//!   times. Dropping it is timed by a small thread with a precise sleep, so
//!   the line is free for the answer within about 0.1 ms.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::acquire::gpio::lines::{LineKind, LineRequest, Lines};
use crate::config::{DriverPin, KernelRs485};

/// `struct serial_rs485` of the Linux UAPI (linux/serial.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SerialRs485 {
    /// `SER_RS485_*` flags.
    pub flags: u32,
    /// Milliseconds between raising RTS and sending.
    pub delay_rts_before_send: u32,
    /// Milliseconds between the last bit and dropping RTS.
    pub delay_rts_after_send: u32,
    padding: [u32; 5],
}

/// RS-485 mode on.
pub const SER_RS485_ENABLED: u32 = 1;
/// RTS high while sending.
pub const SER_RS485_RTS_ON_SEND: u32 = 1 << 1;
/// RTS high after sending (inverted wiring).
pub const SER_RS485_RTS_AFTER_SEND: u32 = 1 << 2;

/// What the kernel is told for `settings`.
pub fn kernel_settings(settings: &KernelRs485) -> SerialRs485 {
    let rts = if settings.rts_on_send {
        SER_RS485_RTS_ON_SEND
    } else {
        SER_RS485_RTS_AFTER_SEND
    };
    SerialRs485 {
        flags: SER_RS485_ENABLED | rts,
        delay_rts_before_send: settings.delay_before_ms,
        delay_rts_after_send: settings.delay_after_ms,
        padding: [0; 5],
    }
}

/// Puts the port behind `fd` in the kernel's RS-485 mode.
pub fn enable_kernel(fd: RawFd, settings: &KernelRs485) -> io::Result<()> {
    let mut config = kernel_settings(settings);
    // SAFETY: TIOCSRS485 reads one `struct serial_rs485`, which
    // `SerialRs485` lays out exactly (repr(C), eight u32), from a pointer
    // valid for the call.
    let done = unsafe { libc::ioctl(fd, libc::TIOCSRS485, &raw mut config) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A line that enables the transceiver's driver.
pub trait Switch: Send {
    /// Drives it.
    fn set(&mut self, high: bool) -> io::Result<()>;
}

/// The port's RTS line, through the modem-control ioctls.
#[derive(Debug)]
pub struct Rts {
    fd: OwnedFd,
}

impl Rts {
    /// RTS of the port `port` (its descriptor is duplicated, so the switch
    /// can live on another thread).
    pub fn of(port: &impl AsRawFd) -> io::Result<Rts> {
        // SAFETY: dup of a descriptor the port holds open; the new
        // descriptor is owned by the OwnedFd from here on.
        let fd = unsafe { libc::dup(port.as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by dup and is owned by nobody else.
        Ok(Rts {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

impl Switch for Rts {
    fn set(&mut self, high: bool) -> io::Result<()> {
        let bits: libc::c_int = libc::TIOCM_RTS;
        let request = if high { libc::TIOCMBIS } else { libc::TIOCMBIC };
        // SAFETY: TIOCMBIS/TIOCMBIC read one int from a valid pointer.
        let done = unsafe { libc::ioctl(self.fd.as_raw_fd(), request, &raw const bits) };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A GPIO line wired to the transceiver's driver enable.
#[derive(Debug)]
pub struct Pin {
    lines: Lines,
    line: u32,
}

impl Pin {
    /// Requests `pin` as an output, low (receiving).
    pub fn open(pin: &DriverPin) -> io::Result<Pin> {
        let lines = Lines::open(
            &pin.chip,
            &[LineRequest {
                pin: pin.line,
                kind: LineKind::Output { high: false },
            }],
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Pin {
            lines,
            line: pin.line,
        })
    }
}

impl Switch for Pin {
    fn set(&mut self, high: bool) -> io::Result<()> {
        self.lines
            .set(self.line, high)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Raises a driver enable for each frame and drops it when the frame has left.
#[derive(Clone)]
pub struct DriverEnable {
    switch: Arc<Mutex<(Box<dyn Switch>, bool)>>,
    /// Counts raises, so a drop scheduled for an earlier frame does not
    /// cut a later one short.
    frames: Arc<AtomicU64>,
    drops: mpsc::Sender<(u64, Instant)>,
    char_time: Duration,
}

impl std::fmt::Debug for DriverEnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverEnable")
            .field("char_time", &self.char_time)
            .finish_non_exhaustive()
    }
}

impl DriverEnable {
    /// Drives `switch` for frames on a line of `char_time` per character;
    /// starts the thread that drops it.
    pub fn new(switch: Box<dyn Switch>, char_time: Duration) -> io::Result<DriverEnable> {
        let switch = Arc::new(Mutex::new((switch, false)));
        let frames = Arc::new(AtomicU64::new(0));
        let (drops, pending) = mpsc::channel::<(u64, Instant)>();
        let (switch_for_thread, frames_for_thread) = (Arc::clone(&switch), Arc::clone(&frames));
        std::thread::Builder::new()
            .name("rs485-de".into())
            .spawn(move || drop_after_frames(&pending, &switch_for_thread, &frames_for_thread))?;
        Ok(DriverEnable {
            switch,
            frames,
            drops,
            char_time,
        })
    }

    /// A frame is about to be written: enable the driver.
    pub fn raise(&self) {
        self.frames.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.switch.lock().unwrap_or_else(PoisonError::into_inner);
        let (switch, high) = &mut *guard;
        if !*high {
            match switch.set(true) {
                Ok(()) => *high = true,
                Err(e) => tracing::warn!(error = %e, "cannot enable the RS-485 driver"),
            }
        }
    }

    /// `bytes` were handed to the port just now: drop the driver enable
    /// when they have left.
    pub fn written(&self, bytes: usize) {
        let end = Instant::now() + self.char_time * u32::try_from(bytes).unwrap_or(u32::MAX);
        // The thread ends only with the last DriverEnable; nobody to tell then.
        let _ = self.drops.send((self.frames.load(Ordering::SeqCst), end));
    }
}

fn drop_after_frames(
    pending: &mpsc::Receiver<(u64, Instant)>,
    switch: &Mutex<(Box<dyn Switch>, bool)>,
    frames: &AtomicU64,
) {
    crate::ops::precise::exact_sleeps();
    while let Ok((frame, end)) = pending.recv() {
        let now = Instant::now();
        if end > now {
            std::thread::sleep(end - now);
        }
        if frames.load(Ordering::SeqCst) != frame {
            // A later frame started meanwhile: its own drop follows.
            continue;
        }
        let mut guard = switch.lock().unwrap_or_else(PoisonError::into_inner);
        let (switch, high) = &mut *guard;
        if *high {
            match switch.set(false) {
                Ok(()) => *high = false,
                Err(e) => tracing::warn!(error = %e, "cannot disable the RS-485 driver"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_told_rts_on_send_or_after_and_the_delays() {
        let on_send = kernel_settings(&KernelRs485 {
            rts_on_send: true,
            delay_before_ms: 2,
            delay_after_ms: 3,
        });
        assert_eq!(on_send.flags, SER_RS485_ENABLED | SER_RS485_RTS_ON_SEND);
        assert_eq!(
            (on_send.delay_rts_before_send, on_send.delay_rts_after_send),
            (2, 3)
        );
        let inverted = kernel_settings(&KernelRs485 {
            rts_on_send: false,
            delay_before_ms: 0,
            delay_after_ms: 0,
        });
        assert_eq!(inverted.flags, SER_RS485_ENABLED | SER_RS485_RTS_AFTER_SEND);
        assert_eq!(
            std::mem::size_of::<SerialRs485>(),
            32,
            "the UAPI struct is eight u32"
        );
    }

    /// A switch that records what it was set to, and when.
    struct Recorder(Arc<Mutex<Vec<(bool, Instant)>>>);

    impl Switch for Recorder {
        fn set(&mut self, high: bool) -> io::Result<()> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((high, Instant::now()));
            Ok(())
        }
    }

    #[test]
    fn rts_goes_high_before_a_frame_and_low_when_its_last_byte_has_left() {
        let log = Arc::new(Mutex::new(Vec::new()));
        // 9600 8N1: 1.04 ms a character.
        let char_time = Duration::from_micros(1042);
        let de = DriverEnable::new(Box::new(Recorder(Arc::clone(&log))), char_time).unwrap();
        de.raise();
        let written = Instant::now();
        de.written(8);
        // A second write of the same frame keeps it high until its own end.
        de.raise();
        de.written(4);
        std::thread::sleep(Duration::from_millis(30));
        let log = log.lock().unwrap().clone();
        let levels: Vec<bool> = log.iter().map(|(high, _)| *high).collect();
        assert_eq!(levels, [true, false], "one rise, one drop: {log:?}");
        let low_after = log[1].1.duration_since(written);
        assert!(
            low_after >= char_time * 4,
            "not before the last byte left: {low_after:?}"
        );
    }
}
