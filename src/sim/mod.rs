//! A Modbus device simulator: units with register and bit tables, served over
//! TCP, RTU over TCP, or a serial port, by tokio-modbus's server side.
//!
//! Addresses that were never set do not exist: reading them draws exception
//! 0x02 (illegal data address), as a real device answers for a hole in its
//! map. Unit ids that were never set do not answer at all, as an absent
//! device on a serial line. A unit answers Read Device Identification
//! (function 43/14) only when it was given an identity, and refuses it with
//! exception 0x01 otherwise, as devices without it do. Tests, benchmarks
//! and the demo use it.

pub mod demo;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_modbus::prelude::{ConformityLevel, DeviceIdObject, ReadDeviceIdentificationResponse};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::core::identity::{Identity, PRODUCT_CODE, REVISION, VENDOR_NAME};
use crate::core::layout::Table;

/// How many served requests the log keeps (oldest dropped first).
const LOG_CAPACITY: usize = 10_000;

/// One request the simulator answered (with data or an exception).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Unit id addressed.
    pub unit: u8,
    /// Function code.
    pub function: u8,
    /// First address.
    pub start: u16,
    /// Number of bits or registers.
    pub count: u16,
}

#[derive(Debug, Default, Clone)]
struct Unit {
    coils: BTreeMap<u16, bool>,
    discrete: BTreeMap<u16, bool>,
    input: BTreeMap<u16, u16>,
    holding: BTreeMap<u16, u16>,
    /// How long the unit takes to answer, for slow devices and late replies.
    delay: Duration,
    /// An input register that goes up by one after every read of it, so a
    /// reader can tell whether it missed or repeated a sample.
    read_counter: Option<u16>,
    /// What the unit answers to function 43/14; `None` refuses it.
    identity: Option<Identity>,
    /// The values the read counter answered and when (the most recent
    /// [`LOG_CAPACITY`]), so a test can tell a value lost by the reader
    /// from one that was still on the wire when the reader died.
    counted: VecDeque<(u16, SystemTime)>,
}

#[derive(Debug, Default)]
struct State {
    units: HashMap<u8, Unit>,
    log: VecDeque<Served>,
    counts: HashMap<u8, u64>,
}

/// A set of simulated units; clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Simulator {
    state: Arc<Mutex<State>>,
}

impl Simulator {
    /// A simulator with no units.
    pub fn new() -> Simulator {
        Simulator::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters to a simulator, so a poisoned lock is reused.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets registers of `table` (input or holding) of `unit` from `start` on, creating the unit.
    pub fn set_registers(&self, unit: u8, table: Table, start: u16, values: &[u16]) {
        let mut state = self.lock();
        let u = state.units.entry(unit).or_default();
        let map = match table {
            Table::Input => &mut u.input,
            Table::Holding | Table::Coil | Table::Discrete => &mut u.holding,
        };
        for (address, value) in (start..=u16::MAX).zip(values) {
            map.insert(address, *value);
        }
    }

    /// Sets bits of `table` (coil or discrete) of `unit` from `start` on, creating the unit.
    pub fn set_bits(&self, unit: u8, table: Table, start: u16, values: &[bool]) {
        let mut state = self.lock();
        let u = state.units.entry(unit).or_default();
        let map = match table {
            Table::Discrete => &mut u.discrete,
            Table::Coil | Table::Input | Table::Holding => &mut u.coils,
        };
        for (address, value) in (start..=u16::MAX).zip(values) {
            map.insert(address, *value);
        }
    }

    /// Makes input register `address` of `unit` count the reads that cover it
    /// (it starts at its current value and wraps at 65535).
    pub fn count_reads(&self, unit: u8, address: u16) {
        let mut state = self.lock();
        let u = state.units.entry(unit).or_default();
        u.input.entry(address).or_insert(0);
        u.read_counter = Some(address);
    }

    /// Makes `unit` answer only after `delay` (a slow device, or one whose replies come after the timeout).
    pub fn set_delay(&self, unit: u8, delay: Duration) {
        self.lock().units.entry(unit).or_default().delay = delay;
    }

    /// Makes `unit` answer Read Device Identification with `identity`, creating the unit.
    pub fn set_identity(&self, unit: u8, identity: Identity) {
        self.lock().units.entry(unit).or_default().identity = Some(identity);
    }

    /// The values the read counter of `unit` answered, oldest first, each
    /// with the time it was answered.
    pub fn counter_answers(&self, unit: u8) -> Vec<(u16, SystemTime)> {
        self.lock()
            .units
            .get(&unit)
            .map(|u| u.counted.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Current holding or input registers of a unit; `None` where an address does not exist.
    pub fn registers(&self, unit: u8, table: Table, start: u16, count: u16) -> Option<Vec<u16>> {
        let state = self.lock();
        let u = state.units.get(&unit)?;
        let map = if table == Table::Input {
            &u.input
        } else {
            &u.holding
        };
        read_range(map, start, count).ok()
    }

    /// The requests answered so far (the most recent [`LOG_CAPACITY`]).
    pub fn served(&self) -> Vec<Served> {
        self.lock().log.iter().copied().collect()
    }

    /// How many requests `unit` has answered.
    pub fn served_count(&self, unit: u8) -> u64 {
        self.lock().counts.get(&unit).copied().unwrap_or(0)
    }

    /// Serves Modbus TCP on `listener` until the future is dropped.
    pub async fn serve_tcp(self, listener: TcpListener) -> io::Result<()> {
        use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
        let on_connected = move |stream, address| {
            let sim = self.clone();
            async move { accept_tcp_connection(stream, address, move |_| Ok(Some(sim.clone()))) }
        };
        Server::new(listener)
            .serve(
                &on_connected,
                |e| tracing::debug!(error = %e, "simulator connection ended"),
            )
            .await
    }

    /// Serves RTU frames over TCP connections on `listener` until the future is dropped.
    pub async fn serve_rtu_over_tcp(self, listener: TcpListener) -> io::Result<()> {
        use tokio_modbus::server::rtu_over_tcp::{Server, accept_tcp_connection};
        let on_connected = move |stream, address| {
            let sim = self.clone();
            async move { accept_tcp_connection(stream, address, move |_| Ok(Some(sim.clone()))) }
        };
        Server::new(listener)
            .serve(
                &on_connected,
                |e| tracing::debug!(error = %e, "simulator connection ended"),
            )
            .await
    }

    /// Serves Modbus RTU on a serial port until the future is dropped.
    pub async fn serve_rtu(self, port: tokio_serial::SerialStream) -> io::Result<()> {
        tokio_modbus::server::rtu::Server::new(port)
            .serve_forever(self)
            .await
    }

    fn answer(
        &self,
        request: SlaveRequest<'static>,
    ) -> (Duration, Result<Option<Response>, ExceptionCode>) {
        let mut state = self.lock();
        let Some(unit) = state.units.get_mut(&request.slave) else {
            return (Duration::ZERO, Ok(None));
        };
        let delay = unit.delay;
        let (function, start, count, result) = match request.request {
            Request::ReadCoils(a, n) => (
                1,
                a,
                n,
                read_bits(&unit.coils, a, n).map(Response::ReadCoils),
            ),
            Request::ReadDiscreteInputs(a, n) => (
                2,
                a,
                n,
                read_bits(&unit.discrete, a, n).map(Response::ReadDiscreteInputs),
            ),
            Request::ReadHoldingRegisters(a, n) => (
                3,
                a,
                n,
                read_range(&unit.holding, a, n).map(Response::ReadHoldingRegisters),
            ),
            Request::ReadInputRegisters(a, n) => {
                let read = read_range(&unit.input, a, n);
                if let (Ok(_), Some(counter)) = (&read, unit.read_counter)
                    && (u32::from(a)..u32::from(a) + u32::from(n)).contains(&u32::from(counter))
                    && let Some(v) = unit.input.get_mut(&counter)
                {
                    if unit.counted.len() == LOG_CAPACITY {
                        unit.counted.pop_front();
                    }
                    unit.counted.push_back((*v, SystemTime::now()));
                    *v = v.wrapping_add(1);
                }
                (4, a, n, read.map(Response::ReadInputRegisters))
            }
            Request::WriteSingleCoil(a, v) => (
                5,
                a,
                1,
                write(&mut unit.coils, a, &[v]).map(|()| Response::WriteSingleCoil(a, v)),
            ),
            Request::WriteSingleRegister(a, v) => (
                6,
                a,
                1,
                write(&mut unit.holding, a, &[v]).map(|()| Response::WriteSingleRegister(a, v)),
            ),
            Request::WriteMultipleCoils(a, ref v) => {
                let n = u16::try_from(v.len()).unwrap_or(u16::MAX);
                (
                    15,
                    a,
                    n,
                    write(&mut unit.coils, a, v).map(|()| Response::WriteMultipleCoils(a, n)),
                )
            }
            Request::WriteMultipleRegisters(a, ref v) => {
                let n = u16::try_from(v.len()).unwrap_or(u16::MAX);
                (
                    16,
                    a,
                    n,
                    write(&mut unit.holding, a, v).map(|()| Response::WriteMultipleRegisters(a, n)),
                )
            }
            Request::ReadDeviceIdentification(code, first) => (
                43,
                u16::from(first),
                0,
                unit.identity
                    .as_ref()
                    .ok_or(ExceptionCode::IllegalFunction)
                    .map(|identity| identification(identity, code, first)),
            ),
            _ => (0, 0, 0, Err(ExceptionCode::IllegalFunction)),
        };
        if state.log.len() == LOG_CAPACITY {
            state.log.pop_front();
        }
        state.log.push_back(Served {
            unit: request.slave,
            function,
            start,
            count,
        });
        *state.counts.entry(request.slave).or_default() += 1;
        (delay, result.map(Some))
    }
}

impl Service for Simulator {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Exception>> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let (delay, answer) = self.answer(request);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

/// A one-part identification response from object `first` on.
fn identification(
    identity: &Identity,
    code: tokio_modbus::prelude::ReadCode,
    first: u8,
) -> Response {
    let objects = [
        (VENDOR_NAME, &identity.vendor),
        (PRODUCT_CODE, &identity.product_code),
        (REVISION, &identity.revision),
    ]
    .into_iter()
    .filter(|(id, _)| *id >= first)
    .map(|(id, text)| DeviceIdObject {
        id,
        value: text.clone().into_bytes().into(),
    })
    .collect();
    Response::ReadDeviceIdentification(ReadDeviceIdentificationResponse {
        read_code: code,
        conformity_level: ConformityLevel::BasicIdentification,
        more_follows: false,
        next_object_id: 0,
        device_id_objects: objects,
    })
}

fn read_range<T: Copy>(
    map: &BTreeMap<u16, T>,
    start: u16,
    count: u16,
) -> Result<Vec<T>, ExceptionCode> {
    if count == 0 {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let end = u32::from(start) + u32::from(count);
    if end > 65536 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    let values: Vec<T> = map
        .range(start..)
        .take_while(|(a, _)| u32::from(**a) < end)
        .map(|(_, v)| *v)
        .collect();
    if values.len() == usize::from(count) {
        Ok(values)
    } else {
        Err(ExceptionCode::IllegalDataAddress)
    }
}

fn read_bits(
    map: &BTreeMap<u16, bool>,
    start: u16,
    count: u16,
) -> Result<Vec<bool>, ExceptionCode> {
    read_range(map, start, count)
}

fn write<T: Copy>(
    map: &mut BTreeMap<u16, T>,
    start: u16,
    values: &[T],
) -> Result<(), ExceptionCode> {
    let count = u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
    read_range(map, start, count)?;
    for (address, value) in (start..=u16::MAX).zip(values) {
        map.insert(address, *value);
    }
    Ok(())
}
