//! One poll cycle of one device: send its plan's requests, heal the plan,
//! and turn the answers into per-metric values.

use crate::acquire::modbus::codec::{LengthMismatch, decode_registers};
use crate::acquire::modbus::link::{Data, Link};
use crate::acquire::modbus::plan::ReadPlan;
use crate::config::Device;
use crate::core::value::{Fault, MetricId, Value, now_ms};

/// Modbus exception 0x02, the answer to a request that covers a missing address.
const ILLEGAL_DATA_ADDRESS: u8 = 0x02;

/// The answers of one cycle, aligned with the plan's requests.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// For each request of the plan: when its answer arrived, and the data or why there is none.
    pub answers: Vec<(u64, Result<Data, Fault>)>,
    /// Whether the device answered at all (data or an exception) during the cycle.
    pub answered: bool,
}

/// Polls `device` once through `link`, following `plan`.
///
/// A request refused with "illegal data address" that serves several metrics
/// is bisected on the spot and retried, and `plan` keeps the split. A
/// transport failure ends the cycle: the remaining requests get the same
/// fault rather than a timeout each, so a dead device costs its bus one timeout.
pub async fn poll(link: &mut Link, device: &str, unit: u8, plan: &mut ReadPlan) -> Cycle {
    let mut answers = Vec::with_capacity(plan.requests().len());
    let mut answered = false;
    let mut index = 0;
    while let Some(request) = plan.requests().get(index) {
        let (table, start, count) = (request.table, request.start, request.count);
        match link.read(unit, table, start, count).await {
            Ok(Ok(data)) => {
                answered = true;
                answers.push((now_ms(), Ok(data)));
                index += 1;
            }
            Ok(Err(code)) => {
                answered = true;
                if code == ILLEGAL_DATA_ADDRESS
                    && let Some((left, right)) = plan.split(index)
                {
                    tracing::warn!(
                        device,
                        "{request_text} was refused with illegal data address; the plan now reads {left} and {right} instead",
                        request_text =
                            format!("FC{:02} {table} {start}+{count}", table.read_function()),
                    );
                    continue;
                }
                answers.push((now_ms(), Err(Fault::Exception(code))));
                index += 1;
            }
            Err(e) => {
                let fault = Fault::from(e);
                let at = now_ms();
                answers.resize(plan.requests().len(), (at, Err(fault)));
                break;
            }
        }
    }
    Cycle { answers, answered }
}

/// The raw image a metric's value was decoded from, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw<'a> {
    /// Registers.
    Registers(&'a [u16]),
    /// One bit.
    Bit(bool),
    /// Nothing was read.
    Missing,
}

/// One metric's outcome in a cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReading<'a> {
    /// The metric within the device.
    pub metric: MetricId,
    /// When the answer arrived (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The engineering value, or why there is none.
    pub value: Result<Value, Fault>,
    /// What was on the wire.
    pub raw: Raw<'a>,
}

/// Decodes every metric of a cycle; `plan` must be the one `cycle` was polled with.
pub fn decode<'a>(device: &Device, plan: &ReadPlan, cycle: &'a Cycle) -> Vec<MetricReading<'a>> {
    let mut readings = Vec::with_capacity(device.metrics.len());
    for (request, (timestamp_ms, answer)) in plan.requests().iter().zip(&cycle.answers) {
        for member in &request.members {
            let Some(register) = device.metrics.get(member.metric).and_then(|m| m.register())
            else {
                continue;
            };
            let (offset, count) = (usize::from(member.offset), usize::from(member.count));
            let (value, raw) = match answer {
                Err(fault) => (Err(fault.clone()), Raw::Missing),
                Ok(Data::Bits(bits)) => match bits.get(offset) {
                    Some(bit) => (Ok(Value::Bool(*bit)), Raw::Bit(*bit)),
                    None => (Err(short(offset + 1, bits.len())), Raw::Missing),
                },
                Ok(Data::Registers(regs)) => match regs.get(offset..offset + count) {
                    Some(image) => {
                        let value = decode_registers(&register.layout, image)
                            .map(|raw| match register.scaling {
                                Some(scaling) => scaling.apply(raw),
                                None => raw,
                            })
                            .map_err(|e| Fault::Malformed(e.to_string()));
                        (value, Raw::Registers(image))
                    }
                    None => (Err(short(offset + count, regs.len())), Raw::Missing),
                },
            };
            readings.push(MetricReading {
                metric: member.metric,
                timestamp_ms: *timestamp_ms,
                value,
                raw,
            });
        }
    }
    readings
}

fn short(expected: usize, got: usize) -> Fault {
    Fault::Malformed(LengthMismatch { expected, got }.to_string())
}
