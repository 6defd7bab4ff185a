//! Named, persistent parameters. A [`ParamStore`] outlives every tape: a tape
//! borrows it to read the values, the optimizer takes it mutably between steps.

use std::collections::HashMap;

use super::Tensor;
use crate::error::{Error, Result};

/// Handle of one parameter in its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub(crate) usize);

impl ParamId {
    /// Position of the parameter in its store (registration order).
    pub fn index(&self) -> usize {
        self.0
    }
}

/// One parameter: its name (timm's naming for the models), value, and whether
/// weight decay applies to it.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub weight_decay: bool,
}

/// Every parameter of a model, in registration order.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, usize>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a parameter; names are unique.
    pub fn add(&mut self, name: &str, value: Tensor, weight_decay: bool) -> Result<ParamId> {
        if self.by_name.contains_key(name) {
            return Err(Error::InvalidConfig {
                what: format!("parameter {name} registered twice"),
            });
        }
        let id = self.params.len();
        self.by_name.insert(name.to_string(), id);
        self.params.push(Param { name: name.to_string(), value, weight_decay });
        Ok(ParamId(id))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }

    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }

    pub fn value(&self, id: ParamId) -> &Tensor {
        &self.params[id.0].value
    }

    /// The parameter called `name`, if any.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied().map(ParamId)
    }

    /// Parameters with their handles, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }

    pub(crate) fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }
}
