//! Scheduler configuration, readable from a small subset of KubeSchedulerConfiguration YAML.

use std::path::Path;

use serde::Deserialize;

/// NodeResourcesFit's scoring strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scoring {
    /// Prefer emptier nodes (spreads load; upstream's default).
    #[default]
    LeastAllocated,
    /// Prefer fuller nodes (bin packing).
    MostAllocated,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Pods whose spec.schedulerName equals this are ours.
    pub scheduler_name: String,
    pub scoring: Scoring,
    /// Resources NodeResourcesFit scores and their weights (default cpu 1, memory 1);
    /// NodeResourcesBalancedAllocation uses the same names with weight 1.
    pub resources: Vec<(String, i64)>,
    /// How many API writes (bindings, status updates, preemption deletes) may be in flight.
    pub parallelism: usize,
    /// Upstream's percentageOfNodesToScore; 0 is adaptive (50% shrinking to 5%, at least 100
    /// nodes).
    pub percentage_of_nodes_to_score: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler_name: "default-scheduler".into(),
            scoring: Scoring::LeastAllocated,
            resources: vec![("cpu".into(), 1), ("memory".into(), 1)],
            parallelism: 64,
            percentage_of_nodes_to_score: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    parallelism: Option<usize>,
    #[serde(default)]
    percentage_of_nodes_to_score: Option<u32>,
    #[serde(default)]
    profiles: Vec<Profile>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Profile {
    #[serde(default)]
    scheduler_name: Option<String>,
    #[serde(default)]
    percentage_of_nodes_to_score: Option<u32>,
    #[serde(default)]
    plugin_config: Vec<PluginConfig>,
}

#[derive(Deserialize)]
struct PluginConfig {
    name: String,
    #[serde(default)]
    args: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FitArgs {
    #[serde(default)]
    scoring_strategy: Option<Strategy>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Strategy {
    #[serde(rename = "type", default)]
    type_: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
}

#[derive(Deserialize)]
struct ResourceSpec {
    name: String,
    #[serde(default)]
    weight: Option<i64>,
}

impl Config {
    /// Reads a KubeSchedulerConfiguration; only the first profile is used.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: p.clone(),
                source,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: p.clone(),
                message,
            },
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: String::new(),
            message,
        };
        let file: File = serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Parse {
            path: String::new(),
            source,
        })?;
        let mut cfg = Config::default();
        if let Some(p) = file.parallelism {
            if p == 0 {
                return Err(invalid("parallelism: must be greater than 0".into()));
            }
            cfg.parallelism = p;
        }
        cfg.percentage_of_nodes_to_score = file.percentage_of_nodes_to_score.unwrap_or(0);
        if let Some(profile) = file.profiles.first() {
            if let Some(name) = profile.scheduler_name.as_ref().filter(|n| !n.is_empty()) {
                cfg.scheduler_name = name.clone();
            }
            if let Some(p) = profile.percentage_of_nodes_to_score {
                cfg.percentage_of_nodes_to_score = p;
            }
            for pc in profile
                .plugin_config
                .iter()
                .filter(|pc| pc.name == "NodeResourcesFit")
            {
                let args: FitArgs = serde_json::from_value(pc.args.clone())
                    .map_err(|e| invalid(format!("NodeResourcesFit args: {e}")))?;
                let Some(strategy) = args.scoring_strategy else {
                    continue;
                };
                match strategy.type_.as_deref() {
                    None | Some("LeastAllocated") => cfg.scoring = Scoring::LeastAllocated,
                    Some("MostAllocated") => cfg.scoring = Scoring::MostAllocated,
                    Some(other) => {
                        return Err(invalid(format!(
                            "NodeResourcesFit scoringStrategy.type {other:?} is not supported"
                        )));
                    }
                }
                if !strategy.resources.is_empty() {
                    cfg.resources = strategy
                        .resources
                        .iter()
                        .map(|r| (r.name.clone(), r.weight.unwrap_or(1).max(1)))
                        .collect();
                }
            }
        }
        if cfg.percentage_of_nodes_to_score > 100 {
            return Err(invalid(
                "percentageOfNodesToScore: must be in the range [0, 100]".into(),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_allocated_from_yaml() -> Result<(), ConfigError> {
        let cfg = Config::from_yaml(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: my-sched\n  pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: MostAllocated\n        resources:\n        - name: cpu\n          weight: 2\n        - name: memory\n          weight: 1\n",
        )?;
        assert_eq!(cfg.scoring, Scoring::MostAllocated);
        assert_eq!(cfg.scheduler_name, "my-sched");
        assert_eq!(
            cfg.resources,
            vec![("cpu".to_string(), 2), ("memory".to_string(), 1)]
        );
        Ok(())
    }

    #[test]
    fn defaults_and_errors() -> Result<(), ConfigError> {
        let cfg = Config::from_yaml("kind: KubeSchedulerConfiguration\n")?;
        assert_eq!(cfg.scoring, Scoring::LeastAllocated);
        assert_eq!(cfg.scheduler_name, "default-scheduler");
        let bad = "profiles:\n- pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: RequestedToCapacityRatio\n";
        assert!(matches!(
            Config::from_yaml(bad),
            Err(ConfigError::Invalid { .. })
        ));
        Ok(())
    }
}
