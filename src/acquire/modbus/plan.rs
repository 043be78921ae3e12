//! The read planner: which Modbus requests one poll cycle of a device sends.
//!
//! Metrics of one table are coalesced into the fewest requests that respect
//! the device's size limits and the largest run of unused addresses it may
//! read (`max_gap`); a metric never straddles two requests. The greedy
//! left-to-right sweep is optimal for this interval-covering problem. When a
//! device refuses a coalesced request with "illegal data address" (it has a
//! hole inside it), the request is bisected at a metric boundary and the plan
//! keeps the split, so later cycles do not repeat the failure.

use crate::config::{Device, Metric};
use crate::core::layout::{Limits, Span, Table};
use std::fmt;
use std::time::Duration;

/// A metric served by a request, located relative to the request's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The metric's index in its device.
    pub metric: usize,
    /// Offset of the metric's first address from the request's start.
    pub offset: u16,
    /// Addresses the metric occupies.
    pub count: u16,
}

/// One read request of a poll cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The table read.
    pub table: Table,
    /// First address requested.
    pub start: u16,
    /// Number of bits or registers requested.
    pub count: u16,
    /// The metrics whose values this request carries, by address.
    pub members: Vec<Member>,
}

impl ReadRequest {
    fn from_spans(table: Table, spans: &[(usize, Span)]) -> ReadRequest {
        let start = spans.iter().map(|(_, s)| s.start).min().unwrap_or(0);
        let end = spans
            .iter()
            .map(|(_, s)| s.end())
            .max()
            .unwrap_or(u32::from(start));
        ReadRequest {
            table,
            start,
            count: u16::try_from(end - u32::from(start)).unwrap_or(u16::MAX),
            members: spans
                .iter()
                .map(|(metric, s)| Member {
                    metric: *metric,
                    offset: s.start - start,
                    count: s.count,
                })
                .collect(),
        }
    }

    fn spans(&self) -> Vec<(usize, Span)> {
        self.members
            .iter()
            .map(|m| {
                let span = Span {
                    table: self.table,
                    start: self.start + m.offset,
                    count: m.count,
                };
                (m.metric, span)
            })
            .collect()
    }

    /// Splits the request in two at the metric boundary nearest its middle.
    /// `None` when it cannot be split: a single metric, or metrics that all overlap.
    pub fn bisect(&self) -> Option<(ReadRequest, ReadRequest)> {
        let spans = self.spans();
        // A cut between members i-1 and i is clean when nothing before i reaches past i's start.
        let mut reach = 0u32;
        let mut best: Option<usize> = None;
        let middle = spans.len() / 2;
        for i in 1..spans.len() {
            reach = reach.max(spans[i - 1].1.end());
            if reach <= u32::from(spans[i].1.start) {
                let closer = best.is_none_or(|b| i.abs_diff(middle) < b.abs_diff(middle));
                if closer {
                    best = Some(i);
                }
            }
        }
        let cut = best?;
        Some((
            ReadRequest::from_spans(self.table, &spans[..cut]),
            ReadRequest::from_spans(self.table, &spans[cut..]),
        ))
    }
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FC{:02} {} {}+{}",
            self.table.read_function(),
            self.table,
            self.start,
            self.count
        )
    }
}

/// The requests of one device's poll cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    requests: Vec<ReadRequest>,
}

impl ReadPlan {
    /// The requests that read every metric of `device` once.
    pub fn for_device(device: &Device) -> ReadPlan {
        ReadPlan::for_metrics(device, |_| true)
    }

    /// The requests of `device`'s scan class `period`: only its metrics
    /// polled that often, so a slow metric is not read on the fast cycle.
    pub fn for_period(device: &Device, period: Duration) -> ReadPlan {
        ReadPlan::for_metrics(device, |m| device.period_of(m) == period)
    }

    fn for_metrics(device: &Device, pick: impl Fn(&Metric) -> bool) -> ReadPlan {
        ReadPlan::build(
            device
                .metrics
                .iter()
                .enumerate()
                .filter(|(_, m)| pick(m))
                .filter_map(|(i, m)| Some((i, m.register()?.span()))),
            device.modbus().map(|m| m.limits).unwrap_or_default(),
        )
    }

    /// Plans the fewest requests covering every metric within `limits`.
    ///
    /// Every span must fit one request (`count <= limits.max_count(table)`);
    /// config validation guarantees it, and a span that does not gets a request of its own.
    pub fn build(spans: impl IntoIterator<Item = (usize, Span)>, limits: Limits) -> ReadPlan {
        let mut spans: Vec<(usize, Span)> = spans.into_iter().collect();
        spans.sort_by_key(|(metric, s)| (s.table, s.start, s.end(), *metric));
        let mut requests = Vec::new();
        let mut group: Vec<(usize, Span)> = Vec::new();
        let (mut start, mut end) = (0u32, 0u32);
        for (metric, span) in spans {
            let joins = group.first().is_some_and(|(_, first)| {
                let gap = u32::from(span.start).saturating_sub(end);
                let new_end = end.max(span.end());
                first.table == span.table
                    && gap <= u32::from(limits.max_gap)
                    && new_end - start <= u32::from(limits.max_count(span.table))
            });
            if !joins && !group.is_empty() {
                requests.push(ReadRequest::from_spans(group[0].1.table, &group));
                group.clear();
            }
            if group.is_empty() {
                start = u32::from(span.start);
                end = span.end();
            }
            end = end.max(span.end());
            group.push((metric, span));
        }
        if let Some((_, first)) = group.first() {
            requests.push(ReadRequest::from_spans(first.table, &group));
        }
        ReadPlan { requests }
    }

    /// The requests, in the order a cycle sends them.
    pub fn requests(&self) -> &[ReadRequest] {
        &self.requests
    }

    /// Replaces request `index` by its two halves, returning them; `None` (and
    /// no change) when it cannot be split or `index` is out of range.
    pub fn split(&mut self, index: usize) -> Option<(ReadRequest, ReadRequest)> {
        let (left, right) = self.requests.get(index)?.bisect()?;
        self.requests
            .splice(index..=index, [left.clone(), right.clone()]);
        Some((left, right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(start: u16, count: u16) -> Span {
        Span {
            table: Table::Holding,
            start,
            count,
        }
    }

    /// The plan as (table, start, count, metrics) tuples, easy to compare.
    fn shape(plan: &ReadPlan) -> Vec<(Table, u16, u16, Vec<usize>)> {
        plan.requests()
            .iter()
            .map(|r| {
                (
                    r.table,
                    r.start,
                    r.count,
                    r.members.iter().map(|m| m.metric).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn coalescing_follows_gaps_limits_and_tables() {
        use Table::*;
        struct Case {
            name: &'static str,
            spans: Vec<Span>,
            limits: Limits,
            expected: Vec<(Table, u16, u16, Vec<usize>)>,
        }
        let lim = |max_registers, max_bits, max_gap| Limits {
            max_registers,
            max_bits,
            max_gap,
        };
        let bit = |table, start| Span {
            table,
            start,
            count: 1,
        };
        let cases = vec![
            Case {
                name: "adjacent registers merge",
                spans: vec![reg(0, 2), reg(2, 2), reg(4, 1)],
                limits: lim(125, 2000, 0),
                expected: vec![(Holding, 0, 5, vec![0, 1, 2])],
            },
            Case {
                name: "a gap within max_gap is read, a wider one is not",
                spans: vec![reg(0, 2), reg(5, 2), reg(20, 2)],
                limits: lim(125, 2000, 3),
                expected: vec![(Holding, 0, 7, vec![0, 1]), (Holding, 20, 2, vec![2])],
            },
            Case {
                name: "max_gap zero keeps non-adjacent metrics apart",
                spans: vec![reg(0, 1), reg(2, 1)],
                limits: lim(125, 2000, 0),
                expected: vec![(Holding, 0, 1, vec![0]), (Holding, 2, 1, vec![1])],
            },
            Case {
                name: "the register limit splits without cutting a metric",
                spans: vec![reg(0, 2), reg(2, 2), reg(4, 2)],
                limits: lim(5, 2000, 10),
                expected: vec![(Holding, 0, 4, vec![0, 1]), (Holding, 4, 2, vec![2])],
            },
            Case {
                name: "declaration order does not matter",
                spans: vec![reg(10, 2), reg(0, 2), reg(4, 2)],
                limits: lim(125, 2000, 10),
                expected: vec![(Holding, 0, 12, vec![1, 2, 0])],
            },
            Case {
                name: "overlapping views share one read",
                spans: vec![reg(0, 2), reg(0, 2), reg(1, 1)],
                limits: lim(125, 2000, 0),
                expected: vec![(Holding, 0, 2, vec![0, 1, 2])],
            },
            Case {
                name: "tables never mix",
                spans: vec![
                    reg(0, 1),
                    Span {
                        table: Input,
                        start: 1,
                        count: 1,
                    },
                    bit(Coil, 0),
                    bit(Discrete, 0),
                ],
                limits: lim(125, 2000, 10),
                expected: vec![
                    (Coil, 0, 1, vec![2]),
                    (Discrete, 0, 1, vec![3]),
                    (Input, 1, 1, vec![1]),
                    (Holding, 0, 1, vec![0]),
                ],
            },
            Case {
                name: "bits coalesce up to the bit limit",
                spans: vec![bit(Coil, 0), bit(Coil, 7), bit(Coil, 15), bit(Coil, 16)],
                limits: lim(125, 16, 10),
                expected: vec![(Coil, 0, 16, vec![0, 1, 2]), (Coil, 16, 1, vec![3])],
            },
            Case {
                name: "the last register address is reachable",
                spans: vec![reg(65534, 2), reg(65532, 1)],
                limits: lim(125, 2000, 1),
                expected: vec![(Holding, 65532, 4, vec![1, 0])],
            },
            Case {
                name: "no metrics, no requests",
                spans: vec![],
                limits: Limits::default(),
                expected: vec![],
            },
        ];
        for case in cases {
            let plan = ReadPlan::build(case.spans.into_iter().enumerate(), case.limits);
            assert_eq!(shape(&plan), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn every_metric_is_served_exactly_once_and_within_its_request() {
        let spans: Vec<Span> = (0..200u16).map(|i| reg(i * 3 % 400, 1 + i % 4)).collect();
        let plan = ReadPlan::build(spans.iter().copied().enumerate(), Limits::default());
        let mut seen = vec![0; spans.len()];
        for r in plan.requests() {
            assert!(r.count <= 125);
            for m in &r.members {
                seen[m.metric] += 1;
                assert_eq!(r.start + m.offset, spans[m.metric].start);
                assert!(m.offset + m.count <= r.count);
            }
        }
        assert!(seen.iter().all(|n| *n == 1));
    }

    #[test]
    fn a_refused_request_is_bisected_at_a_metric_boundary_and_the_split_is_kept() {
        let spans = [reg(0, 2), reg(2, 2), reg(6, 2), reg(8, 2)];
        let mut plan = ReadPlan::build(spans.into_iter().enumerate(), Limits::default());
        assert_eq!(
            shape(&plan),
            vec![(Table::Holding, 0, 10, vec![0, 1, 2, 3])]
        );

        let (left, right) = plan.split(0).expect("four metrics can be split");
        assert_eq!(
            (left.start, left.count, right.start, right.count),
            (0, 4, 6, 4)
        );
        assert_eq!(
            shape(&plan),
            vec![
                (Table::Holding, 0, 4, vec![0, 1]),
                (Table::Holding, 6, 4, vec![2, 3])
            ]
        );
        // Offsets are rebased on the new start.
        assert_eq!(plan.requests()[1].members[0].offset, 0);

        assert!(plan.split(1).is_some());
        assert_eq!(plan.requests().len(), 3);
        assert_eq!(shape(&plan)[2], (Table::Holding, 8, 2, vec![3]));
        // A single metric cannot be split further; the plan stays as it is.
        assert!(plan.split(2).is_none());
        assert!(plan.split(9).is_none());
        assert_eq!(plan.requests().len(), 3);
    }

    #[test]
    fn overlapping_metrics_are_never_separated_by_a_split() {
        let spans = [reg(0, 4), reg(2, 1), reg(3, 1)];
        let plan = ReadPlan::build(spans.into_iter().enumerate(), Limits::default());
        assert!(plan.requests()[0].bisect().is_none());

        let spans = [reg(0, 2), reg(1, 1), reg(5, 1)];
        let plan = ReadPlan::build(spans.into_iter().enumerate(), Limits::default());
        let (left, right) = plan.requests()[0]
            .bisect()
            .expect("a clean cut exists before 5");
        assert_eq!(
            (left.start, left.count, right.start, right.count),
            (0, 2, 5, 1)
        );
    }

    #[test]
    fn thirty_meters_of_one_model_have_one_meters_plan_thirty_times() {
        let mut text = String::from(
            "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n\
             [[bus]]\nname = \"b\"\nkind = \"rtu\"\nport = \"/dev/ttyUSB0\"\n\
             [[model]]\nname = \"meter\"\nmax_read_registers = 20\n",
        );
        for (i, register) in [30001, 30007, 30013, 30071, 40001].iter().enumerate() {
            text += &format!(
                "[[model.metric]]\nname = \"m{i}\"\nregister = {register}\ntype = \"f32\"\n"
            );
        }
        for unit in 1..=30 {
            text += &format!(
                "[[device]]\nname = \"meter{unit}\"\nbus = \"b\"\nunit = {unit}\nmodel = \"meter\"\n"
            );
        }
        let config =
            crate::config::Config::from_toml(std::path::Path::new("t.toml"), &text).expect("valid");
        let plans: Vec<ReadPlan> = config.devices.iter().map(ReadPlan::for_device).collect();
        assert_eq!(plans.len(), 30);
        assert!(
            plans.iter().all(|p| p == &plans[0]),
            "the same plan for each"
        );
        let requests: Vec<(Table, u16, u16)> = plans[0]
            .requests()
            .iter()
            .map(|r| (r.table, r.start, r.count))
            .collect();
        assert_eq!(
            requests,
            vec![
                (Table::Input, 0, 14),
                (Table::Input, 70, 2),
                (Table::Holding, 0, 2)
            ],
            "the model's limits (20 registers) split the input registers"
        );
    }
}
