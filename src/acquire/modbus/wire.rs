//! Time on a serial line: how long characters and frames take at the
//! line's baud rate, how long the answer to a request is, and a transport
//! wrapper that notes when an answer starts to arrive.
//!
//! A request's timeout counts until the first byte of its answer (the
//! libmodbus model); once bytes flow, the frame gets the time its length
//! needs on the wire plus the inter-character allowance (`byte_timeout`).
//! A 120-register answer at 9600 baud takes 255 ms to arrive: cut off by a
//! 150 ms timeout, a healthy device would look dead.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::Request;

use crate::acquire::modbus::direction::DriverEnable;

/// The longest RTU frame (address, PDU, CRC).
pub const MAX_FRAME: usize = 256;

/// Bytes of `request` as an RTU frame.
pub fn request_len(request: &Request<'_>) -> usize {
    match request {
        Request::WriteMultipleCoils(_, coils) => 9 + coils.len().div_ceil(8),
        Request::WriteMultipleRegisters(_, words) => 9 + 2 * words.len(),
        Request::ReadDeviceIdentification(..) => 7,
        _ => 8,
    }
}

/// Bytes of the normal answer to `request` as an RTU frame (an exception
/// is shorter: 5 bytes); the longest frame where it cannot be known.
pub fn response_len(request: &Request<'_>) -> usize {
    match request {
        Request::ReadCoils(_, n) | Request::ReadDiscreteInputs(_, n) => {
            5 + usize::from(*n).div_ceil(8)
        }
        Request::ReadHoldingRegisters(_, n) | Request::ReadInputRegisters(_, n) => {
            5 + 2 * usize::from(*n)
        }
        Request::WriteSingleCoil(..)
        | Request::WriteSingleRegister(..)
        | Request::WriteMultipleCoils(..)
        | Request::WriteMultipleRegisters(..) => 8,
        _ => MAX_FRAME,
    }
}

/// When the answer to the request in flight started, and last went on, to arrive.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// First and latest arrival since the last reset.
    at: Mutex<Option<(Instant, Instant)>>,
}

impl Arrivals {
    /// A request is about to go out: nothing has arrived for it yet.
    pub fn reset(&self) {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// When the first byte since [`Arrivals::reset`] arrived.
    pub fn first(&self) -> Option<Instant> {
        self.at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|(first, _)| first)
    }

    /// When the latest bytes since [`Arrivals::reset`] arrived: the end of
    /// an answer, from which the silence before the next request counts.
    pub fn last(&self) -> Option<Instant> {
        self.at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|(_, last)| last)
    }

    fn saw(&self) {
        let now = Instant::now();
        let mut at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
        *at = Some(at.map_or((now, now), |(first, _)| (first, now)));
    }
}

/// A serial port that notes in [`Arrivals`] when bytes arrive, and drives
/// the transceiver's driver enable around what it sends, if fieldmq does.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    arrivals: Arc<Arrivals>,
    driver: Option<DriverEnable>,
}

impl<T> Watched<T> {
    /// `inner`, reporting to `arrivals`, switching `driver` if given.
    pub fn new(inner: T, arrivals: Arc<Arrivals>, driver: Option<DriverEnable>) -> Watched<T> {
        Watched {
            inner,
            arrivals,
            driver,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.arrivals.saw();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(driver) = &self.driver {
            driver.raise();
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Some(driver), Poll::Ready(Ok(n))) = (&self.driver, &written)
            && *n > 0
        {
            driver.written(*n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Parity, SerialLine};

    fn line(baud: u32) -> SerialLine {
        SerialLine {
            port: "/dev/null".into(),
            baud,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
            byte_timeout: None,
            direction: crate::config::Direction::Auto,
        }
    }

    #[test]
    fn a_large_answer_takes_longer_than_a_short_timeout() {
        let answer = response_len(&Request::ReadHoldingRegisters(0, 120));
        assert_eq!(answer, 245);
        let at_9600 = line(9600).wire_time(answer);
        assert!(
            (at_9600.as_secs_f64() - 0.2552).abs() < 0.001,
            "{at_9600:?}"
        );
        assert_eq!(response_len(&Request::ReadCoils(0, 9)), 7);
        assert_eq!(response_len(&Request::WriteSingleRegister(0, 1)), 8);
        assert_eq!(
            request_len(&Request::WriteMultipleRegisters(0, vec![1, 2].into())),
            13
        );
    }
}
