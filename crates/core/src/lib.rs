//! flotilla's workflows over providers: create, update, destroy, status; the state store; the
//! deployment PKI; the agent client.

pub mod pki;
