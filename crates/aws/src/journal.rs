//! The records file, shared by concurrent region tasks and saved after every change.

use std::sync::Mutex;

use flotilla_core::provider::ProviderError;
use flotilla_core::state::Deployment;

use crate::records::Records;

const FILE: &str = "aws/records.json";

/// [`Records`] behind a lock, written to the deployment's state directory on every change.
#[derive(Debug)]
pub struct Journal {
    deployment: Deployment,
    records: Mutex<Records>,
}

impl Journal {
    pub fn open(deployment: &Deployment) -> Result<Journal, ProviderError> {
        deployment
            .provider_dir("aws")
            .map_err(|e| ProviderError::with_source("creating the aws state directory", e))?;
        let records: Records = deployment
            .read_json(FILE)
            .map_err(|e| ProviderError::with_source("reading aws/records.json", e))?
            .unwrap_or_default();
        Ok(Journal { deployment: deployment.clone(), records: Mutex::new(records) })
    }

    /// A copy of the records.
    pub fn read(&self) -> Records {
        self.lock().clone()
    }

    /// Changes the records and saves them before returning.
    pub fn update<T>(&self, change: impl FnOnce(&mut Records) -> T) -> Result<T, ProviderError> {
        let mut records = self.lock();
        let result = change(&mut records);
        self.deployment
            .write_json(FILE, &*records)
            .map_err(|e| ProviderError::with_source("writing aws/records.json", e))?;
        Ok(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }
}
