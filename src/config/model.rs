//! `[[model]]` and `include`: a device type's metrics and defaults written
//! once, in the config or in files it includes, and used by any number of
//! devices with `model = "NAME"`.
//!
//! A model's metrics are checked for each device that uses it, in the
//! model's own file: an error points at the model's line and says which
//! device used it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::Diagnostic;
use super::check::{BYTE_ORDERS, Checker, DEFAULT_RETAIN, Publishing, WORD_ORDERS, line_of};
use super::raw::{RawDevice, RawMetric, RawModel, RawModelFile};
use super::{ConfigError, Metric};
use crate::core::identity::Identity;
use crate::core::layout::Limits;
use crate::core::message::Qos;

/// A model: what `scan` matches devices against, and what a Sparkplug
/// Template definition declares.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownModel {
    /// What `model = "..."` names.
    pub name: String,
    /// How its devices answer function 43/14, if the model says.
    pub identity: Option<ModelIdentity>,
    /// The file it was written in.
    pub file: PathBuf,
    /// Its metrics as a device without settings of its own has them (empty
    /// for models read by `scan`, which needs only the identity).
    pub metrics: Arc<[Metric]>,
}

/// `[model.identity]`: the vendor and product code a device of the model reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// Vendor name (object 0x00).
    pub vendor: String,
    /// Product code (object 0x01).
    pub product_code: String,
}

impl KnownModel {
    /// Whether a device that answered with `identity` is of this model.
    pub fn fits(&self, identity: &Identity) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|m| identity.is(&m.vendor, &m.product_code))
    }

    /// The models of the files `pattern` (a glob) matches, as a scan sees
    /// them: names and identities only, each file's metrics unchecked. A
    /// file that is not a models file is an error naming it.
    pub fn installed(pattern: &Path) -> Result<Vec<KnownModel>, ConfigError> {
        let paths = glob::glob(&pattern.to_string_lossy()).map_err(|e| ConfigError::Io {
            path: pattern.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let mut models = Vec::new();
        for path in paths.filter_map(Result::ok) {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
                path: path.clone(),
                source,
            })?;
            let file = toml::from_str::<RawModelFile>(&text).map_err(|e| ConfigError::Invalid {
                path: path.clone(),
                diagnostics: vec![Diagnostic {
                    file: None,
                    line: e.span().map_or(1, |s| line_of(&text, s.start)),
                    context: String::new(),
                    message: e.message().trim_end().to_owned(),
                }],
            })?;
            models.extend(file.model.iter().map(|m| KnownModel {
                name: m.name.get_ref().clone(),
                identity: m.identity.as_ref().map(|i| ModelIdentity {
                    vendor: i.vendor.get_ref().clone(),
                    product_code: i.product_code.get_ref().clone(),
                }),
                file: path.clone(),
                metrics: Arc::from(Vec::new()),
            }));
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models)
    }
}

/// Text a span points into: the config file (`file: None`) or an included one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) file: Option<&'a Path>,
    pub(super) text: &'a str,
}

/// A file `include` named, as read.
#[derive(Debug)]
pub(super) struct Included {
    pub(super) path: PathBuf,
    pub(super) text: String,
}

/// A model and the text it was written in.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModelRef<'a> {
    pub(super) source: Source<'a>,
    pub(super) raw: &'a RawModel,
}

/// One metric of a device once its model is applied, with the text it was written in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry<'a> {
    pub(super) source: Source<'a>,
    pub(super) raw: &'a RawMetric,
    /// Written in the model (not overridden by the device).
    pub(super) from_model: bool,
}

/// Reads the files `include` names; globs are taken relative to `base`. A
/// pattern that is not a glob, matches nothing or names an unreadable file
/// is a diagnostic at that pattern.
pub(super) fn read_included(
    base: &Path,
    include: Option<&Spanned<Vec<Spanned<String>>>>,
    text: &str,
) -> (Vec<Included>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut problem = |pattern: &Spanned<String>, message: String| {
        problems.push(Diagnostic {
            file: None,
            line: line_of(text, pattern.span().start),
            context: String::new(),
            message: format!("include \"{}\": {message}", pattern.get_ref()),
        });
    };
    for pattern in include.map(|i| i.get_ref().as_slice()).unwrap_or_default() {
        let full = base.join(pattern.get_ref());
        let paths = match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => paths,
            Err(e) => {
                problem(pattern, format!("not a file pattern: {e}"));
                continue;
            }
        };
        let mut matched: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
        matched.sort();
        if matched.is_empty() {
            problem(pattern, format!("no file matches {}", full.display()));
        }
        for path in matched {
            match std::fs::read_to_string(&path) {
                Ok(text) => files.push(Included { path, text }),
                Err(e) => problem(pattern, format!("cannot read {}: {e}", path.display())),
            }
        }
    }
    (files, problems)
}

/// Parses included files; one that is not a file of `[[model]]` tables is a
/// diagnostic in that file.
pub(super) fn parse_included(files: &[Included]) -> (Vec<(usize, RawModelFile)>, Vec<Diagnostic>) {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for (i, file) in files.iter().enumerate() {
        match toml::from_str::<RawModelFile>(&file.text) {
            Ok(models) => parsed.push((i, models)),
            Err(e) => problems.push(Diagnostic {
                file: Some(file.path.clone()),
                line: e.span().map_or(1, |s| line_of(&file.text, s.start)),
                context: String::new(),
                message: format!(
                    "{} (an included file holds only [[model]] tables)",
                    e.message().trim_end()
                ),
            }),
        }
    }
    (parsed, problems)
}

/// A device's metrics after its model: the model's in its order, each
/// replaced whole by the device's metric of the same name, then the
/// device's own.
pub(super) fn merged<'a>(
    device: &'a RawDevice,
    model: Option<ModelRef<'a>>,
    main: Source<'a>,
) -> Vec<Entry<'a>> {
    let own = |raw: &'a RawMetric| Entry {
        source: main,
        raw,
        from_model: false,
    };
    let Some(model) = model else {
        return device.metric.iter().map(own).collect();
    };
    let overrides: HashMap<&str, &RawMetric> = device
        .metric
        .iter()
        .map(|m| (m.name.get_ref().as_str(), m))
        .collect();
    let mut entries: Vec<Entry<'a>> = model
        .raw
        .metric
        .iter()
        .map(|m| match overrides.get(m.name.get_ref().as_str()) {
            Some(mine) => own(mine),
            None => Entry {
                source: model.source,
                raw: m,
                from_model: true,
            },
        })
        .collect();
    let in_model = |name: &str| model.raw.metric.iter().any(|m| m.name.get_ref() == name);
    entries.extend(
        device
            .metric
            .iter()
            .filter(|m| !in_model(m.name.get_ref()))
            .map(own),
    );
    entries
}

impl<'a> Checker<'a> {
    /// Runs `check` with errors pointing into `source`.
    pub(super) fn in_source<R>(
        &mut self,
        source: Source<'a>,
        check: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let outer = std::mem::replace(&mut self.source, source);
        let result = check(self);
        self.source = outer;
        result
    }

    /// The models by name; a name given twice is an error at the second.
    pub(super) fn catalog(&mut self, models: Vec<ModelRef<'a>>) -> HashMap<String, ModelRef<'a>> {
        let mut catalog: HashMap<String, ModelRef<'a>> = HashMap::new();
        for model in models {
            let name = model.raw.name.get_ref();
            match catalog.get(name) {
                Some(first) => {
                    let place = first
                        .source
                        .file
                        .map_or_else(|| "this file".to_owned(), |f| f.display().to_string());
                    let line = line_of(first.source.text, first.raw.name.span().start);
                    self.in_source(model.source, |c| {
                        c.error(
                            model.raw.name.span(),
                            &format!("model \"{name}\""),
                            format!("model \"{name}\" is already defined ({place}, line {line})"),
                        );
                    });
                }
                None => {
                    self.in_source(model.source, |c| {
                        c.topic_id(&format!("model \"{name}\""), "name", &model.raw.name);
                        c.unique(
                            &format!("model \"{name}\""),
                            "metric",
                            model.raw.metric.iter().map(|m| &m.name),
                        );
                    });
                    catalog.insert(name.clone(), model);
                }
            }
        }
        catalog
    }

    /// Each model's metrics as a device with no settings of its own would
    /// have them: what a Sparkplug Template definition declares. Models no
    /// device uses are checked here, once each, so a broken model in an
    /// included library is reported before the day a device takes it; the
    /// problems of a used model were already reported for its devices.
    pub(super) fn model_metrics(
        &mut self,
        catalog: &HashMap<String, ModelRef<'a>>,
        devices: &[RawDevice],
    ) -> HashMap<String, Arc<[Metric]>> {
        let mut models: Vec<&ModelRef<'a>> = catalog.values().collect();
        models.sort_by_key(|m| m.raw.name.get_ref());
        let mut lists = HashMap::new();
        for model in models {
            let name = model.raw.name.get_ref();
            let used = devices
                .iter()
                .any(|d| d.model.as_ref().is_some_and(|n| n.get_ref() == name));
            let reported = self.diagnostics.len();
            let ctx = format!("model \"{name}\"");
            let metrics = self.in_source(model.source, |c| {
                let defaults = Limits::default();
                let limits = Limits {
                    max_registers: model
                        .raw
                        .max_read_registers
                        .as_ref()
                        .and_then(|v| c.int(&ctx, "max_read_registers", v, 1, 125))
                        .unwrap_or(defaults.max_registers),
                    max_gap: model
                        .raw
                        .max_gap
                        .as_ref()
                        .and_then(|v| c.int(&ctx, "max_gap", v, 0, 2000))
                        .unwrap_or(defaults.max_gap),
                    ..defaults
                };
                let byte_order = model
                    .raw
                    .byte_order
                    .as_ref()
                    .and_then(|v| c.choice(&ctx, "byte_order", v, &BYTE_ORDERS))
                    .unwrap_or_default();
                let word_order = model
                    .raw
                    .word_order
                    .as_ref()
                    .and_then(|v| c.choice(&ctx, "word_order", v, &WORD_ORDERS))
                    .unwrap_or_default();
                let publishing = Publishing {
                    qos: Qos::default(),
                    retain: DEFAULT_RETAIN,
                };
                let entries: Vec<Entry<'a>> = model
                    .raw
                    .metric
                    .iter()
                    .map(|raw| Entry {
                        source: model.source,
                        raw,
                        from_model: true,
                    })
                    .collect();
                let metrics: Vec<Metric> = entries
                    .iter()
                    .map(|e| c.metric(&ctx, e.raw, byte_order, word_order, &limits, publishing))
                    .collect();
                c.overlaps(&ctx, &entries, &metrics);
                metrics
            });
            if used {
                self.diagnostics.truncate(reported);
            }
            lists.insert(name.clone(), Arc::from(metrics));
        }
        lists
    }

    /// The catalog as `scan` sees it, by name; an identity with an empty
    /// vendor or product code is an error (it would match devices that
    /// send nothing).
    pub(super) fn known_models(
        &mut self,
        catalog: &HashMap<String, ModelRef<'a>>,
        mut metrics: HashMap<String, Arc<[Metric]>>,
        config_path: &Path,
    ) -> Vec<KnownModel> {
        let mut models: Vec<KnownModel> = catalog
            .values()
            .map(|model| {
                let ctx = format!("model \"{}\"", model.raw.name.get_ref());
                let identity = model.raw.identity.as_ref().map(|i| {
                    self.in_source(model.source, |c| {
                        for (key, value) in
                            [("vendor", &i.vendor), ("product_code", &i.product_code)]
                        {
                            if value.get_ref().trim().is_empty() {
                                c.error(
                                    value.span(),
                                    &ctx,
                                    format!("identity.{key} must not be empty"),
                                );
                            }
                        }
                    });
                    ModelIdentity {
                        vendor: i.vendor.get_ref().clone(),
                        product_code: i.product_code.get_ref().clone(),
                    }
                });
                KnownModel {
                    name: model.raw.name.get_ref().clone(),
                    identity,
                    file: model.source.file.unwrap_or(config_path).to_owned(),
                    metrics: metrics
                        .remove(model.raw.name.get_ref())
                        .unwrap_or_else(|| Arc::from(Vec::new())),
                }
            })
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    /// The model `device` names, if it names one that exists.
    pub(super) fn model_of(
        &mut self,
        device: &RawDevice,
        catalog: &HashMap<String, ModelRef<'a>>,
    ) -> Option<ModelRef<'a>> {
        let name = device.model.as_ref()?;
        let found = catalog.get(name.get_ref()).copied();
        if found.is_none() {
            let mut known: Vec<&str> = catalog.keys().map(String::as_str).collect();
            known.sort_unstable();
            let message = if known.is_empty() {
                format!(
                    "model \"{}\" is not defined: no [[model]] in this file or its include files",
                    name.get_ref()
                )
            } else {
                format!(
                    "model \"{}\" is not defined, expected one of: {}",
                    name.get_ref(),
                    known.join(", ")
                )
            };
            self.error(
                name.span(),
                &format!("device \"{}\"", device.name.get_ref()),
                message,
            );
        }
        found
    }
}
