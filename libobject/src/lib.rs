//! libobject: classes and objects on the log.
//!
//! A class (declared in a package: fields, methods bound to functions, access modifiers,
//! inheritance) gives its objects, addressed by (class, key), their state and code. Calls to
//! one object run one at a time in the order their call records reached the log; each call's
//! output and the state it left are one done record, so a call takes effect once, with its
//! answer, however often the gateway that runs it dies. Calls between objects carry keys made
//! from the calling call, so a method run again makes none of them twice.
//!
//! libobject depends on `logbook` and the SDK only: methods are functions (in-process or in
//! a worker) that `method` adapts, and the runtime (`Objects`) runs wherever a `Ctx` can
//! append, read and call functions.

/// The README's examples compile.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod dataflow;
mod entry;
mod error;
mod objects;
mod package;
mod saga;
mod this;

pub use dataflow::{
    register_dataflows, Dataflow, DataflowRun, Step, DATAFLOW_STEPS_MAX, DATAFLOW_WORKFLOW,
};
pub use entry::{
    decision_tag, done_tag, join_tag, key_tag, members_tag, object_tag, packages_tag, txn_tag,
    vote_tag, CallError, Decision, JoinRecord, Outcome, TxnCall,
};
pub use error::{Error, ErrorKind};
pub use objects::{builtin_functions, BATCH_READ_MAX, LINKS_PER_TXN_MAX, REFS_MAX};
pub use objects::{
    CallRequest, HistoryEntry, HistoryPage, Message, MethodInput, MethodOutput, ObjectView,
    Objects, Observation, Observer, Queued, TxnOutcome, TxnStatus, BATCH_CALLS_MAX,
    BATCH_STATE_BYTES_MAX, CALL_FUNCTION, HISTORY_LIMIT_MAX, KEY_BYTES_MAX, OBJECTS_CACHED_MAX,
    QUEUED_LISTED_MAX, TXN_CALLS_MAX, TXN_ID_BYTES_MAX,
};
pub use package::{
    valid_name, Access, Class, ClassDecl, Classes, Field, FieldDecl, FieldType, Method, MethodDecl,
    ObjectRef, Package, Reference, DELETE_METHOD, LINK_METHOD,
};
pub use saga::{register_sagas, saga_instance, Compensation, Saga, SagaCall, SAGA_WORKFLOW};
pub use this::{method, This};
