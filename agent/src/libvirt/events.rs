//! libvirt domain events, delivered on a broadcast channel: lifecycle
//! changes (inventory refresh), migration iterations, and job completion
//! with the final statistics, which vanish from the source with the domain.
//!
//! The `virt` crate wraps none of this, so it is raw `virt::sys` FFI.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Once;
use std::time::Duration;

use tokio::sync::broadcast;
use virt::sys;

use super::FinalStats;

/// A domain event, keyed by domain UUID.
#[derive(Debug, Clone, PartialEq)]
pub enum LibvirtEvent {
    /// The domain started, stopped, was defined, undefined, suspended…
    Lifecycle {
        /// Domain UUID.
        uuid: String,
    },
    /// A migration started another pass over guest memory.
    Iteration {
        /// Domain UUID.
        uuid: String,
        /// The pass.
        iteration: u64,
    },
    /// A job (migration) ended; its final statistics.
    JobCompleted {
        /// Domain UUID.
        uuid: String,
        /// The figures.
        stats: FinalStats,
    },
}

/// Installs libvirt's default event loop and runs it on a thread. Must run
/// before the first connection is opened; later calls do nothing.
pub fn start_event_loop() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: called once, before any connection exists, as libvirt requires.
        unsafe { sys::virEventRegisterDefaultImpl() };
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| {
                loop {
                    // SAFETY: the default implementation was registered above.
                    if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt event thread; events are lost");
        }
    });
}

/// Registers the three callbacks on `conn`, sending to `tx`. Returns the
/// callback ids (to deregister before closing the connection).
pub fn register(conn: &virt::connect::Connect, tx: &broadcast::Sender<LibvirtEvent>) -> Vec<c_int> {
    // SAFETY: the pointer is used only for the registration calls below,
    // while `conn` is borrowed and so alive.
    let conn = unsafe { conn.as_ptr() };
    let mut ids = Vec::new();
    let callbacks: [(c_int, sys::virConnectDomainEventGenericCallback); 3] = [
        // SAFETY: libvirt calls each callback with the signature of its event id.
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int, unsafe {
            std::mem::transmute::<*const (), sys::virConnectDomainEventGenericCallback>(
                lifecycle as *const (),
            )
        }),
        (
            sys::VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION as c_int,
            unsafe {
                std::mem::transmute::<*const (), sys::virConnectDomainEventGenericCallback>(
                    iteration as *const (),
                )
            },
        ),
        (sys::VIR_DOMAIN_EVENT_ID_JOB_COMPLETED as c_int, unsafe {
            std::mem::transmute::<*const (), sys::virConnectDomainEventGenericCallback>(
                job_completed as *const (),
            )
        }),
    ];
    for (event_id, cb) in callbacks {
        let opaque = Box::into_raw(Box::new(tx.clone())) as *mut c_void;
        // SAFETY: `opaque` is a leaked Sender freed by `free_sender` when
        // libvirt drops the callback; `conn` is a live connection.
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn,
                std::ptr::null_mut(),
                event_id,
                cb,
                opaque,
                Some(free_sender),
            )
        };
        if id < 0 {
            // SAFETY: registration failed, so libvirt did not take `opaque`.
            drop(unsafe { Box::from_raw(opaque as *mut broadcast::Sender<LibvirtEvent>) });
            tracing::warn!(event_id, "registering a libvirt event callback failed");
        } else {
            ids.push(id);
        }
    }
    ids
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: `opaque` came from Box::into_raw in `register`.
    drop(unsafe { Box::from_raw(opaque as *mut broadcast::Sender<LibvirtEvent>) });
}

fn send(opaque: *mut c_void, event: LibvirtEvent) {
    // SAFETY: `opaque` is the Sender registered with this callback.
    let tx = unsafe { &*(opaque as *const broadcast::Sender<LibvirtEvent>) };
    // No receiver is fine: nobody is waiting for this event.
    let _ = tx.send(event);
}

fn uuid_of(dom: sys::virDomainPtr) -> Option<String> {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid for the duration of the callback; buf has the documented size.
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } < 0 {
        return None;
    }
    // SAFETY: libvirt NUL-terminates the UUID string.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

unsafe extern "C" fn lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if let Some(uuid) = uuid_of(dom) {
        send(opaque, LibvirtEvent::Lifecycle { uuid });
    }
    0
}

unsafe extern "C" fn iteration(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    iteration: c_int,
    opaque: *mut c_void,
) {
    if let Some(uuid) = uuid_of(dom) {
        send(
            opaque,
            LibvirtEvent::Iteration {
                uuid,
                iteration: iteration.max(0) as u64,
            },
        );
    }
}

unsafe extern "C" fn job_completed(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    params: sys::virTypedParameterPtr,
    nparams: c_int,
    opaque: *mut c_void,
) {
    let Some(uuid) = uuid_of(dom) else { return };
    let params = if params.is_null() || nparams <= 0 {
        Vec::new()
    } else {
        // SAFETY: libvirt passes `nparams` valid parameters, alive for the
        // callback; the copies' strings are read before it returns.
        unsafe { std::slice::from_raw_parts(params, nparams as usize) }.to_vec()
    };
    let stats = virt::domain::JobStats::from((0, params));
    send(
        opaque,
        LibvirtEvent::JobCompleted {
            uuid,
            stats: final_stats(&stats),
        },
    );
}

/// The figures kvmotion reports, from libvirt's job statistics (ms → Duration).
pub fn final_stats(s: &virt::domain::JobStats) -> FinalStats {
    FinalStats {
        elapsed: Duration::from_millis(s.time_elapsed.unwrap_or(0)),
        downtime: Duration::from_millis(s.downtime.unwrap_or(0)),
        data_processed: s.data_processed.unwrap_or(0),
        memory_iteration: s.mem_iteration.unwrap_or(0),
    }
}
