//! Repository import: registers the model repository's models and versions that the registry
//! does not know yet, and reads a version's serving settings from its registry config.

use std::path::Path;

use switchyard_registry::{NewModel, NewVersion, RegistryError, Store, VersionState};

use crate::config::ServingConfig;
use crate::control::repository::{ModelEntry, ModelSettings, ModelToml, VersionEntry, scan};

/// Registers the repository's models and versions that the registry does not know yet.
/// Returns them as "model/version".
pub async fn import_repository(
    store: &dyn Store,
    dir: &Path,
    defaults: &ServingConfig,
) -> anyhow::Result<Vec<String>> {
    import_models(store, dir, defaults, None).await
}

/// As [`import_repository`], for the models named in `only` (all with `None`, or with `*`
/// among the names).
pub async fn import_models(
    store: &dyn Store,
    dir: &Path,
    defaults: &ServingConfig,
    only: Option<&[String]>,
) -> anyhow::Result<Vec<String>> {
    let wanted = |name: &str| only.is_none_or(|names| names.iter().any(|n| n == "*" || n == name));
    let entries = scan(dir, defaults)?;
    let mut imported = Vec::new();
    for entry in entries.into_iter().filter(|entry| wanted(&entry.name)) {
        let known: Vec<String> = known_labels(store, "import", &entry).await?;
        for version in &entry.versions {
            if known.contains(&version.label) {
                continue;
            }
            let new = new_version(dir, &entry, version)?;
            match store.register_version("import", &entry.name, new).await {
                Ok(_) => {}
                Err(RegistryError::Conflict(_)) => continue,
                Err(error) => return Err(error.into()),
            }
            if let Err(reason) = &entry.toml {
                store
                    .set_version_state(
                        "import",
                        &entry.name,
                        &version.label,
                        VersionState::Failed,
                        reason,
                    )
                    .await?;
            }
            imported.push(format!("{}/{}", entry.name, version.label));
        }
    }
    Ok(imported)
}

/// The labels the registry knows of an entry's model, creating the model when it does not know
/// it (a gateway starting at the same time may create it first).
pub async fn known_labels(
    store: &dyn Store,
    actor: &str,
    entry: &ModelEntry,
) -> Result<Vec<String>, RegistryError> {
    match store.model(&entry.name).await {
        Ok(record) => Ok(record.versions.into_iter().map(|v| v.label).collect()),
        Err(RegistryError::NotFound(_)) => {
            let description = entry
                .toml
                .as_ref()
                .ok()
                .and_then(|toml| toml.description.clone())
                .unwrap_or_default();
            let created = store
                .create_model(
                    actor,
                    NewModel {
                        name: entry.name.clone(),
                        description,
                    },
                )
                .await;
            match created {
                Ok(_) | Err(RegistryError::Conflict(_)) => Ok(Vec::new()),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

/// How a repository version is registered: its artifact's absolute path, its model's settings
/// as its config, and where it came from (with the settings' error, if they cannot be used,
/// so that no process loads it with default settings).
pub fn new_version(
    dir: &Path,
    entry: &ModelEntry,
    version: &VersionEntry,
) -> anyhow::Result<NewVersion> {
    let artifact =
        std::path::absolute(&version.artifact).unwrap_or_else(|_| version.artifact.clone());
    let config = match &entry.toml {
        Ok(toml) => serde_json::to_value(toml)?,
        Err(_) => serde_json::json!({}),
    };
    let mut metadata =
        serde_json::json!({"imported_from": dir.join(&entry.name).display().to_string()});
    if let Err(reason) = &entry.toml {
        metadata["import_error"] = serde_json::json!(reason);
    }
    Ok(NewVersion {
        version: Some(version.label.clone()),
        runtime: version.runtime.into(),
        artifact: artifact.display().to_string(),
        config: Some(config),
        metadata: Some(metadata),
    })
}

/// A registered version's serving settings, or why it cannot be served: the error its import
/// recorded, or its config's.
pub fn registered_settings(
    version: &switchyard_registry::Version,
    defaults: &ServingConfig,
) -> Result<ModelSettings, String> {
    match version
        .metadata
        .get("import_error")
        .and_then(|e| e.as_str())
    {
        Some(reason) => Err(reason.to_owned()),
        None => version_settings(&version.config, defaults),
    }
}

/// Reads a version's serving settings from its registry config (a model.toml as JSON).
pub fn version_settings(
    config: &serde_json::Value,
    defaults: &ServingConfig,
) -> Result<ModelSettings, String> {
    // The path names the field a refusal is about (`max_batch_size: invalid value ...`).
    let toml: ModelToml = serde_path_to_error::deserialize(config.clone())
        .map_err(|e| format!("invalid config: {}: {}", e.path(), e.inner()))?;
    ModelSettings::resolve(toml, defaults).map_err(|e| format!("invalid config: {e}"))
}
