//! Plugin modules: upload (validated against the world), look up, list, delete.

use super::checks::check_label;
use super::listing::{contains, ListQuery, Listed, Page, SortValue};
use super::{Catalog, Error};
use crate::model::{ModuleId, ModuleInfo, WebhookId};
use crate::runtime::WORLD;

impl Listed for ModuleInfo {
    fn list_id(&self) -> &str {
        self.id.as_str()
    }

    fn sort_value(&self, field: &str) -> SortValue {
        match field {
            "name" => SortValue::Text(self.name.to_lowercase()),
            "size" => SortValue::Int(self.size as i64),
            _ => SortValue::Int(self.created_at.as_i64()),
        }
    }
}

impl Catalog {
    /// Stores a plugin module after validating it against the world. Uploading the same
    /// bytes again returns the stored module (`false`: not newly created).
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::Invalid`] for a bad name or version, [`Error::Module`] for
    /// bytes that are not a component of the world, or a storage error.
    pub fn upload_module(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
    ) -> Result<(ModuleInfo, bool), Error> {
        let limit = self.config.api.max_module_bytes;
        if bytes.len() > limit {
            return Err(Error::TooLarge {
                what: "the module".into(),
                unit: "bytes",
                size: bytes.len(),
                limit,
            });
        }
        check_label("name", name, self.config.api.max_name_len)?;
        check_label("version", version, 64)?;
        let id = ModuleId::for_bytes(bytes);
        if let Some(existing) = self.store.module_info(&id)? {
            return Ok((existing, false));
        }
        self.store.admit()?;
        let plugin = self.runtime.validate(bytes)?;
        let info = ModuleInfo {
            id: id.clone(),
            name: name.to_string(),
            version: version.to_string(),
            size: bytes.len() as u64,
            world: WORLD.to_string(),
            features: plugin.features.clone(),
            exports: plugin.exports.clone(),
            created_at: self.now(),
        };
        self.store.put_module(&info, bytes)?;
        self.runtime.insert(id, plugin);
        Ok((info, true))
    }

    /// One module's description.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn module(&self, id: &ModuleId) -> Result<ModuleInfo, Error> {
        self.store.module_info(id)?.ok_or_else(|| Error::NotFound {
            kind: "module",
            id: id.to_string(),
        })
    }

    /// The webhooks that use a module, oldest first.
    pub fn module_users(&self, id: &ModuleId) -> Vec<WebhookId> {
        let mut users: Vec<WebhookId> = self
            .webhooks
            .read()
            .unwrap()
            .values()
            .filter(|w| &w.module_id == id)
            .map(|w| w.id.clone())
            .collect();
        users.sort();
        users
    }

    /// Deletes a module, refused while a webhook uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] naming the webhooks that use it, or a storage
    /// error.
    pub fn delete_module(&self, id: &ModuleId) -> Result<ModuleInfo, Error> {
        let info = self.module(id)?;
        let users = self.module_users(&info.id);
        if !users.is_empty() {
            let users: Vec<String> = users.iter().map(ToString::to_string).collect();
            return Err(Error::Conflict(format!(
                "module {} is used by webhook(s) {}; point them at another module first",
                info.id,
                users.join(", ")
            )));
        }
        self.store.delete_module(&info.id)?;
        self.runtime.forget(&info.id);
        Ok(info)
    }

    /// Modules matching the query's filters (`name`, `name_contains`, `version`), ordered
    /// by `created_at`, `name` or `size`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter, or a storage error.
    pub fn list_modules(&self, mut query: ListQuery) -> Result<Page<ModuleInfo>, Error> {
        let name = query.take("name");
        let name_contains = query.take("name_contains");
        let version = query.take("version");
        query.finish()?;
        let items = self
            .store
            .modules()?
            .into_iter()
            .filter(|m| {
                name.as_ref().is_none_or(|n| &m.name == n)
                    && name_contains.as_ref().is_none_or(|n| contains(&m.name, n))
                    && version.as_ref().is_none_or(|v| &m.version == v)
            })
            .collect();
        Ok(query.page(items))
    }

    /// Every module, oldest first.
    ///
    /// # Errors
    /// On storage failure.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>, Error> {
        Ok(self.store.modules()?)
    }
}
