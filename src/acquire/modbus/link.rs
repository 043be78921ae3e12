//! One bus connection: connect, time out, resynchronise, reconnect.
//!
//! tokio-modbus has no request timeout, and after a timeout the late reply
//! stays in the socket or serial buffer, where the next transaction would read
//! it (tokio-modbus#324). On TCP that shows up as a header mismatch forever;
//! on RTU a stale frame of the same unit and function code would be accepted
//! as the answer to the next request. So after any timeout or framing
//! mismatch the [`Link`] drops its context: a TCP bus reconnects, a serial
//! port is closed, left alone for the late-reply window, reopened and flushed.
//! Serial transactions are also spaced by the 3.5-character silent interval,
//! timed to a fraction of a millisecond, and a serial answer that has
//! started to arrive gets the time its length needs on the wire (see
//! [`crate::acquire::modbus::wire`]).

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::client::{Client, Context, rtu, tcp};
use tokio_modbus::prelude::{ReadCode, SlaveContext};
use tokio_modbus::{Request, Response, Slave};
use tokio_serial::{SerialPort, SerialPortBuilderExt};

use std::os::fd::AsRawFd;

use crate::acquire::modbus::direction::{self, DriverEnable, Rts, Switch};
use crate::acquire::modbus::wire::{self, Arrivals, Watched};
use crate::config::{Bus, Direction, Parity, Quirks, SerialLine, Transport};
use crate::core::identity::Identity;
use crate::core::layout::Table;
use crate::core::value::Fault;
use crate::core::write::WriteImage;
use crate::ops::backoff::Backoff;
use crate::ops::precise::sleep_until_precisely;

/// The data of a successful read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Coils or discrete inputs, exactly as many as requested.
    Bits(Vec<bool>),
    /// Registers, exactly as many as requested.
    Registers(Vec<u16>),
}

/// Why a transaction produced no answer from the device.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkError {
    /// No response within the bus timeout.
    #[error("timeout")]
    Timeout,
    /// The connection or port failed.
    #[error("{0}")]
    Io(String),
    /// Not connected, and the next attempt is not due yet.
    #[error("not connected ({0}); retrying")]
    Down(String),
    /// A response arrived that does not belong to the request.
    #[error("{0}")]
    Mismatch(String),
}

impl From<LinkError> for Fault {
    fn from(e: LinkError) -> Fault {
        match e {
            LinkError::Timeout => Fault::Timeout,
            LinkError::Io(why) | LinkError::Down(why) => Fault::Link(why),
            LinkError::Mismatch(why) => Fault::Malformed(why),
        }
    }
}

/// A read's outcome: data, or the device's exception code.
pub type Answer = Result<Data, u8>;

/// The most responses one identification is read in: a device that keeps
/// saying "more follows" must not hold the bus for ever.
pub const IDENTIFICATION_PARTS: usize = 4;

const RECONNECT_BASE: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// A bus connection used by one task, one transaction at a time.
pub struct Link {
    bus: Bus,
    context: Option<Context>,
    reconnect: Backoff,
    /// While disconnected: when the next connect attempt is allowed, and why the last failed.
    retry: Option<(Instant, String)>,
    /// The bus must stay quiet until then (silent interval, turnaround, late-reply window).
    quiet_until: Instant,
    /// When the last transaction ended.
    last_done: Instant,
    /// What the device being served needs.
    quirks: Quirks,
    /// How long a transaction may take; the bus's timeout unless set.
    timeout: Duration,
    /// How long the last transaction took from its request to its outcome.
    last_exchange: Duration,
    /// On a serial line: when the answer in flight started to arrive.
    arrivals: Arc<Arrivals>,
    /// The transceiver's driver enable, when fieldmq drives it; kept across
    /// reopenings, so a GPIO line is requested once.
    driver: Option<DriverEnable>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("bus", &self.bus.name)
            .field("connected", &self.context.is_some())
            .finish()
    }
}

impl Link {
    /// A link for `bus`; it connects on first use.
    pub fn new(bus: &Bus) -> Link {
        Link {
            bus: bus.clone(),
            context: None,
            reconnect: Backoff::new(RECONNECT_BASE, RECONNECT_MAX),
            retry: None,
            quiet_until: Instant::now(),
            last_done: Instant::now(),
            quirks: Quirks::default(),
            timeout: bus.timeout,
            last_exchange: Duration::ZERO,
            arrivals: Arc::new(Arrivals::default()),
            driver: None,
        }
    }

    /// A link over a transport already open to a device (an in-memory one
    /// for fuzzing), framed as `bus` says; once that transport fails, the
    /// link reconnects to `bus`'s own address as usual.
    pub fn attached<T>(bus: &Bus, transport: T) -> Link
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + std::fmt::Debug + 'static,
    {
        let context = match &bus.transport {
            Transport::Tcp { .. } => tcp::attach(transport),
            Transport::Rtu(_) | Transport::RtuOverTcp { .. } => rtu::attach(transport),
        };
        Link {
            context: Some(context),
            ..Link::new(bus)
        }
    }

    /// The transactions that follow are for a device with `quirks`.
    pub fn serve(&mut self, quirks: Quirks) {
        self.quirks = quirks;
    }

    /// Gives the transactions that follow `limit` instead of the bus's
    /// timeout (a scan asks short questions and long ones).
    pub fn set_timeout(&mut self, limit: Duration) {
        self.timeout = limit;
    }

    /// How long the last transaction took, from sending its request (after
    /// any connect and quiet time) to its answer or its failure.
    pub fn last_exchange(&self) -> Duration {
        self.last_exchange
    }

    /// Reads `count` bits or registers from `table` of `unit`.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<Answer, LinkError> {
        let request = match table {
            Table::Coil => Request::ReadCoils(start, count),
            Table::Discrete => Request::ReadDiscreteInputs(start, count),
            Table::Input => Request::ReadInputRegisters(start, count),
            Table::Holding => Request::ReadHoldingRegisters(start, count),
        };
        let response = self.transact(unit, request).await?;
        let data = match response {
            Err(code) => return Ok(Err(code)),
            Ok(Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits))
                if table.is_bits() =>
            {
                if bits.len() < usize::from(count) {
                    return Err(self.mismatch(format!("{} bits for {count} requested", bits.len())));
                }
                bits.truncate(usize::from(count));
                Data::Bits(bits)
            }
            Ok(Response::ReadInputRegisters(regs) | Response::ReadHoldingRegisters(regs))
                if !table.is_bits() =>
            {
                if regs.len() != usize::from(count) {
                    // On a serial line this is the signature of a stale reply to an earlier request.
                    return Err(
                        self.mismatch(format!("{} registers for {count} requested", regs.len()))
                    );
                }
                Data::Registers(regs)
            }
            Ok(other) => return Err(self.mismatch(format!("unexpected response {other:?}"))),
        };
        Ok(Ok(data))
    }

    /// Writes `image` at `address` of `unit`: FC 05 for a coil, FC 06 for one
    /// register, FC 16 for several, and FC 03 + FC 06 for a bit of a register;
    /// with `multiple`, FC 15 and FC 16 only.
    /// The answer is the device's exception code when it refused.
    pub async fn write(
        &mut self,
        unit: u8,
        address: u16,
        image: &WriteImage,
        multiple: bool,
    ) -> Result<Result<(), u8>, LinkError> {
        let one_register = |word: u16| {
            if multiple {
                Request::WriteMultipleRegisters(address, vec![word].into())
            } else {
                Request::WriteSingleRegister(address, word)
            }
        };
        let request = match image {
            WriteImage::Coil(on) if multiple => {
                Request::WriteMultipleCoils(address, vec![*on].into())
            }
            WriteImage::Coil(on) => Request::WriteSingleCoil(address, *on),
            WriteImage::Registers(regs) if regs.len() == 1 => one_register(regs[0]),
            WriteImage::Registers(regs) => {
                Request::WriteMultipleRegisters(address, regs.clone().into())
            }
            WriteImage::RegisterBit { mask, on } => {
                let current = match self.read(unit, Table::Holding, address, 1).await? {
                    Ok(Data::Registers(regs)) => regs.first().copied().unwrap_or(0),
                    Ok(Data::Bits(_)) => {
                        return Err(self.mismatch("bits for a register read".into()));
                    }
                    Err(code) => return Ok(Err(code)),
                };
                let word = if *on { current | mask } else { current & !mask };
                one_register(word)
            }
        };
        match self.transact(unit, request).await? {
            Err(code) => Ok(Err(code)),
            Ok(
                Response::WriteSingleCoil(..)
                | Response::WriteMultipleCoils(..)
                | Response::WriteSingleRegister(..)
                | Response::WriteMultipleRegisters(..),
            ) => Ok(Ok(())),
            Ok(other) => Err(self.mismatch(format!("unexpected response {other:?}"))),
        }
    }

    /// Asks `unit` what it is (function 43/14, basic objects), following
    /// "more follows" for a few responses. The answer is the device's
    /// exception code when it refused (0x01: it does not implement it).
    pub async fn identify(&mut self, unit: u8) -> Result<Result<Identity, u8>, LinkError> {
        let mut objects = Vec::new();
        let mut next = 0;
        for _ in 0..IDENTIFICATION_PARTS {
            let request = Request::ReadDeviceIdentification(ReadCode::Basic, next);
            match self.transact(unit, request).await? {
                Err(code) => return Ok(Err(code)),
                Ok(Response::ReadDeviceIdentification(part)) => {
                    objects.extend(part.device_id_objects);
                    // A next object id that does not advance would loop.
                    if !part.more_follows || part.next_object_id <= next {
                        break;
                    }
                    next = part.next_object_id;
                }
                Ok(other) => return Err(self.mismatch(format!("unexpected response {other:?}"))),
            }
        }
        Ok(Ok(Identity::from_objects(
            objects.iter().map(|o| (o.id, o.value.as_ref())),
        )))
    }

    /// Closes the connection; the next transaction reconnects.
    pub async fn close(&mut self) {
        if let Some(mut context) = self.context.take() {
            // Best effort: the connection is being abandoned either way.
            let _ = timeout(self.timeout, context.disconnect()).await;
        }
    }

    async fn transact(
        &mut self,
        unit: u8,
        request: Request<'static>,
    ) -> Result<Result<Response, u8>, LinkError> {
        // tokio's timer rounds a deadline up to its next millisecond tick:
        // sleeping when the quiet time is already over would cost up to a
        // millisecond per transaction on a TCP bus that needs no gap.
        let quiet = self
            .quiet_until
            .max(self.last_done + self.quirks.request_delay);
        match &self.bus.transport {
            // The silent interval is the spec's, to a fraction of a millisecond.
            Transport::Rtu(_) => sleep_until_precisely(quiet).await,
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. } if quiet > Instant::now() => {
                sleep_until(quiet).await;
            }
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => {}
        }
        let limit = self.timeout;
        let fresh = self.context.is_none();
        let connect_delay = self.quirks.connect_delay;
        // Computed before the context borrows the link.
        let frame = match &self.bus.transport {
            Transport::Rtu(line) => {
                Some(line.wire_time(wire::response_len(&request)) + line.byte_timeout())
            }
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => None,
        };
        let arrivals = Arc::clone(&self.arrivals);
        let context = self.connected().await?;
        if fresh && !connect_delay.is_zero() {
            tokio::time::sleep(connect_delay).await;
        }
        context.set_slave(Slave(unit));
        arrivals.reset();
        let sent = Instant::now();
        let outcome = match frame {
            Some(frame) => {
                answer_within(context.call(request), sent + limit, &arrivals, frame).await
            }
            None => timeout(limit, context.call(request)).await.map_err(|_| ()),
        };
        self.last_done = Instant::now();
        self.last_exchange = self.last_done.duration_since(sent);
        // On a serial line the silence counts from the answer's last byte,
        // not from when the codec was done with it.
        let answer_end = match &self.bus.transport {
            Transport::Rtu(_) => arrivals.last().map(Instant::from_std),
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => None,
        };
        self.quiet_until = answer_end.unwrap_or(self.last_done) + self.gap();
        match outcome {
            Err(()) => {
                self.resync();
                Err(LinkError::Timeout)
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                self.context = None;
                Err(LinkError::Io(e.to_string()))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                self.resync();
                Err(LinkError::Mismatch(e.to_string()))
            }
            Ok(Ok(Err(exception))) => Ok(Err(u8::from(exception))),
            Ok(Ok(Ok(response))) => Ok(Ok(response)),
        }
    }

    fn mismatch(&mut self, why: String) -> LinkError {
        self.resync();
        LinkError::Mismatch(why)
    }

    /// Quiet time between transactions.
    fn gap(&self) -> Duration {
        let silent = match &self.bus.transport {
            Transport::Rtu(line) => line.silent_interval(),
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => Duration::ZERO,
        };
        silent + self.bus.turnaround
    }

    /// Forgets the connection after a lost transaction. A serial line is also
    /// left alone for one timeout, so a late reply lands while the port is
    /// closed and is flushed on reopening instead of answering the next request.
    fn resync(&mut self) {
        self.context = None;
        if matches!(self.bus.transport, Transport::Rtu(_)) {
            self.quiet_until = Instant::now() + self.timeout;
        }
    }

    async fn connected(&mut self) -> Result<&mut Context, LinkError> {
        if self.context.is_none() {
            if let Some((at, why)) = &self.retry
                && Instant::now() < *at
            {
                return Err(LinkError::Down(why.clone()));
            }
            match open(&self.bus, &self.arrivals, &mut self.driver).await {
                Ok(context) => {
                    self.reconnect.reset();
                    self.retry = None;
                    self.context = Some(context);
                }
                Err(why) => {
                    let delay = self.reconnect.next_delay();
                    tracing::warn!(bus = %self.bus.name, error = %why, retry_in = ?delay, "cannot open bus");
                    self.retry = Some((Instant::now() + delay, why.clone()));
                    return Err(LinkError::Io(why));
                }
            }
        }
        self.context
            .as_mut()
            .ok_or_else(|| LinkError::Io("not connected".into()))
    }
}

/// `call`'s outcome, or `Err` when no answer started by `first_deadline`,
/// or one that started did not end within `frame` of its first byte: a
/// frame in transit is never cut off by the timeout.
async fn answer_within<F: std::future::Future>(
    call: F,
    first_deadline: Instant,
    arrivals: &Arrivals,
    frame: Duration,
) -> Result<F::Output, ()> {
    tokio::pin!(call);
    let mut deadline = first_deadline;
    loop {
        tokio::select! {
            outcome = &mut call => return Ok(outcome),
            () = sleep_until(deadline) => {}
        }
        match arrivals.first().map(|at| Instant::from_std(at) + frame) {
            Some(end) if end > deadline => deadline = end,
            _ => return Err(()),
        }
    }
}

/// Opens the bus's connection or port. A free function, so the future borrows
/// only the (shareable) bus settings and not the link with its context.
async fn open(
    bus: &Bus,
    arrivals: &Arc<Arrivals>,
    driver: &mut Option<DriverEnable>,
) -> Result<Context, String> {
    match &bus.transport {
        Transport::Tcp { address } => Ok(tcp::attach(connect_tcp(address, bus.timeout).await?)),
        Transport::RtuOverTcp { address } => {
            Ok(rtu::attach(connect_tcp(address, bus.timeout).await?))
        }
        Transport::Rtu(line) => {
            let port = open_serial(line).map_err(|e| format!("{}: {e}", line.port))?;
            let failed = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", line.port);
            let switch: Option<Box<dyn Switch>> = match &line.direction {
                Direction::Auto => None,
                Direction::Kernel(settings) => {
                    direction::enable_kernel(port.as_raw_fd(), settings)
                        .map_err(|e| failed("kernel RS-485 mode (TIOCSRS485)", e))?;
                    None
                }
                Direction::Rts if driver.is_none() => {
                    Some(Box::new(Rts::of(&port).map_err(|e| failed("RTS", e))?))
                }
                Direction::Pin(pin) if driver.is_none() => Some(Box::new(
                    direction::Pin::open(pin).map_err(|e| failed("driver-enable pin", e))?,
                )),
                Direction::Rts | Direction::Pin(_) => None,
            };
            if let Some(switch) = switch {
                *driver = Some(
                    DriverEnable::new(switch, line.wire_time(1))
                        .map_err(|e| failed("driver-enable thread", e))?,
                );
            }
            Ok(rtu::attach(Watched::new(
                port,
                Arc::clone(arrivals),
                driver.clone(),
            )))
        }
    }
}

async fn connect_tcp(address: &str, limit: Duration) -> Result<TcpStream, String> {
    let stream = timeout(limit, TcpStream::connect(address))
        .await
        .map_err(|_| format!("connect to {address} timed out"))?
        .map_err(|e| format!("connect to {address}: {e}"))?;
    // Requests are small and strictly alternate with responses; Nagle would only add latency.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn open_serial(line: &SerialLine) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    let parity = match line.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = if line.data_bits == 7 {
        tokio_serial::DataBits::Seven
    } else {
        tokio_serial::DataBits::Eight
    };
    let stop_bits = if line.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let port = tokio_serial::new(&line.port, line.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .open_native_async()?;
    // Whatever arrived while the port was closed belongs to no request of ours.
    port.clear(tokio_serial::ClearBuffer::All)?;
    Ok(port)
}
