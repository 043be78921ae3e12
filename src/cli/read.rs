//! `fieldmq read`: one poll of one device, printed as a table (after what
//! the device says it is, function 43/14, where it answers) or as JSON.

use std::process::ExitCode;

use anyhow::Context as _;
use fieldmq::acquire::modbus::cycle::{self, Raw};
use fieldmq::acquire::modbus::link::Link;
use fieldmq::acquire::modbus::plan::ReadPlan;
use fieldmq::config::{Attachment, Config};

use crate::cli::say;

/// Polls device `name` once and prints what it answered; fails when it did not answer.
pub async fn read(config: &Config, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (id, device) = config.device_by_name(name).with_context(|| {
        let known: Vec<&str> = config.devices.iter().map(|d| d.name.as_str()).collect();
        format!(
            "no device \"{name}\" in {}; devices: {}",
            config.path.display(),
            known.join(", ")
        )
    })?;
    let mut plan = ReadPlan::for_device(device);
    let cycle;
    let mut identity = None;
    let (mut readings, answered) = match &device.attachment {
        Attachment::Gpio(chip) => {
            let readings =
                fieldmq::acquire::gpio::read_once(id, device, chip, &config.node.data_dir);
            let answered = readings.iter().any(|r| matches!(r.raw, Raw::Bit(_)));
            (readings, answered)
        }
        Attachment::Modbus(modbus) => {
            let bus = config
                .buses
                .get(modbus.bus)
                .context("device refers to a missing bus")?;
            let mut link = Link::new(bus);
            link.serve(modbus.quirks);
            cycle = cycle::poll(&mut link, &device.name, modbus.unit, &mut plan).await;
            if cycle.answered && modbus.identify {
                identity = link.identify(modbus.unit).await.ok().and_then(Result::ok);
            }
            link.close().await;
            (cycle::decode(device, &plan, &cycle), cycle.answered)
        }
    };
    readings.sort_by_key(|r| r.metric);
    if json {
        let object: serde_json::Map<String, serde_json::Value> = readings
            .iter()
            .filter_map(|r| {
                let metric = device.metrics.get(r.metric)?;
                let value = r
                    .value
                    .as_ref()
                    .map_or(serde_json::Value::Null, |v| v.to_json());
                Some((metric.name.clone(), value))
            })
            .collect();
        say!("{}", serde_json::Value::Object(object));
    } else {
        if let Some(identity) = &identity {
            say!("identity: {identity}\n");
        }
        let rows: Vec<[String; 5]> = readings
            .iter()
            .filter_map(|r| {
                let metric = device.metrics.get(r.metric)?;
                let (value, quality) = match &r.value {
                    Ok(v) => (v.to_string(), "good".to_owned()),
                    Err(fault) => ("-".to_owned(), format!("bad: {fault}")),
                };
                let raw = match r.raw {
                    Raw::Registers(regs) => regs
                        .iter()
                        .map(|r| format!("{r:04X}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    Raw::Bit(bit) => u8::from(bit).to_string(),
                    Raw::Missing => "-".to_owned(),
                };
                Some([
                    metric.name.clone(),
                    value,
                    metric.unit.clone().unwrap_or_default(),
                    quality,
                    raw,
                ])
            })
            .collect();
        print_table(["metric", "value", "unit", "quality", "raw"], &rows);
    }
    if answered {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("fieldmq: device \"{name}\" did not answer");
        Ok(ExitCode::FAILURE)
    }
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
