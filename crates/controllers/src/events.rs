//! Event recording (upstream client-go `tools/events`, the events.k8s.io/v1 broadcaster).
//!
//! An event identical to one recorded recently (same type, action, reason, note, regarding
//! and related object) is not created again: the first one becomes a series and its count
//! goes up. Unlike kube-runtime's `Recorder`, the note is part of that identity, as upstream
//! (`getKey` in client-go, like the core/v1 correlator's key with the message): "New size:
//! 6" and "New size: 2" are two events, not one event seen twice with the first message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;

/// An event not seen again for this long starts over (upstream `finishTime`, 6 minutes).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// Bound on remembered events; the least recently observed is forgotten first.
const MAX_CACHED: usize = 4096;
/// How often expired entries are swept.
const SWEEP_EVERY: SignedDuration = SignedDuration::from_secs(10);

/// Every field of an ObjectReference, as upstream compares them.
type RefKey = [Option<String>; 7];

fn ref_key(r: &ObjectReference) -> RefKey {
    [
        r.api_version.clone(),
        r.kind.clone(),
        r.namespace.clone(),
        r.name.clone(),
        r.uid.clone(),
        r.resource_version.clone(),
        r.field_path.clone(),
    ]
}

/// What makes two events the same (upstream `eventKey`; the reporter is fixed per recorder).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    type_: &'static str,
    action: String,
    reason: String,
    note: Option<String>,
    regarding: RefKey,
    related: Option<RefKey>,
}

fn type_str(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// What to send for one recorded event.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    Create(K8sEvent),
    /// Bump the series of this (already created) event.
    Series(K8sEvent),
}

#[derive(Default)]
struct Cache {
    events: HashMap<Key, (K8sEvent, Timestamp)>,
    last_sweep: Option<Timestamp>,
}

impl Cache {
    /// Decides what an occurrence of `ev` at `now` writes, and remembers it.
    fn observe(
        &mut self,
        reporter: &Reporter,
        ev: &Event,
        regarding: &ObjectReference,
        now: Timestamp,
    ) -> Write {
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            self.events
                .retain(|_, (_, seen)| now.duration_since(*seen) < SERIES_TTL);
            self.last_sweep = Some(now);
        }
        let key = Key {
            type_: type_str(ev.type_),
            action: ev.action.clone(),
            reason: ev.reason.clone(),
            note: ev.note.clone(),
            regarding: ref_key(regarding),
            related: ev.secondary.as_ref().map(ref_key),
        };
        if let Some((event, seen)) = self.events.get_mut(&key)
            && now.duration_since(*seen) < SERIES_TTL
        {
            let count = event.series.as_ref().map_or(2, |s| s.count + 1);
            event.series = Some(EventSeries {
                count,
                last_observed_time: MicroTime(now),
            });
            *seen = now;
            return Write::Series(event.clone());
        }
        if self.events.len() >= MAX_CACHED
            && let Some(oldest) = self
                .events
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(k, _)| k.clone())
        {
            self.events.remove(&oldest);
        }
        let event = new_event(reporter, ev, regarding, now);
        self.events.insert(key, (event.clone(), now));
        Write::Create(event)
    }
}

fn new_event(
    reporter: &Reporter,
    ev: &Event,
    regarding: &ObjectReference,
    now: Timestamp,
) -> K8sEvent {
    // Cluster-scoped objects' events go to the default namespace, as upstream.
    let namespace = regarding
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = regarding
        .name
        .clone()
        .unwrap_or_else(|| reporter.controller.clone());
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(type_str(ev.type_).into()),
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        note: ev.note.clone(),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        ..Default::default()
    }
}

/// Publishes events for the controllers; cheap to clone (one shared cache).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Recorder {
        Recorder {
            client,
            reporter,
            cache: Arc::default(),
        }
    }

    /// Records `ev` about `regarding`: creates the event, or bumps the series of the same
    /// event recorded recently.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let write = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&self.reporter, ev, regarding, Timestamp::now());
        let (event, series) = match write {
            Write::Create(e) => (e, false),
            Write::Series(e) => (e, true),
        };
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &ns);
        if series {
            let name = event.metadata.name.clone().unwrap_or_default();
            let patch = Patch::Merge(json!({ "series": event.series }));
            match api.patch(&name, &PatchParams::default(), &patch).await {
                Ok(_) => return Ok(()),
                // The event expired on the server meanwhile: record it anew (upstream too).
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let mut event = event;
        event.metadata.resource_version = None;
        api.create(&PostParams::default(), &event).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Scale".into(),
            secondary: None,
        }
    }

    fn hpa() -> ObjectReference {
        ObjectReference {
            api_version: Some("autoscaling/v2".into()),
            kind: Some("HorizontalPodAutoscaler".into()),
            name: Some("web".into()),
            namespace: Some("hpa".into()),
            uid: Some("u1".into()),
            ..Default::default()
        }
    }

    fn reporter() -> Reporter {
        Reporter {
            controller: "kube-controller-manager".into(),
            instance: Some("i".into()),
        }
    }

    #[test]
    fn different_notes_are_different_events() {
        let mut cache = Cache::default();
        let t0: Timestamp = "2024-01-01T10:00:00Z".parse().expect("time");
        let up = ev("SuccessfulRescale", "New size: 6; reason: cpu above target");
        let down = ev(
            "SuccessfulRescale",
            "New size: 2; reason: All metrics below target",
        );
        let Write::Create(first) = cache.observe(&reporter(), &up, &hpa(), t0) else {
            panic!("first occurrence creates")
        };
        assert_eq!(first.note, up.note);
        assert_eq!(first.metadata.namespace.as_deref(), Some("hpa"));
        assert!(first.series.is_none());
        // Same reason and object, another note: its own event with its own note.
        let t1 = t0 + SignedDuration::from_secs(10);
        let Write::Create(second) = cache.observe(&reporter(), &down, &hpa(), t1) else {
            panic!("a different note creates a new event")
        };
        assert_eq!(second.note, down.note);
        assert_ne!(second.metadata.name, first.metadata.name);
        // The same note again: a series on the first event.
        let t2 = t0 + SignedDuration::from_secs(20);
        let Write::Series(again) = cache.observe(&reporter(), &up, &hpa(), t2) else {
            panic!("a repeat bumps the series")
        };
        assert_eq!(again.metadata.name, first.metadata.name);
        assert_eq!(again.note, up.note);
        let s = again.series.expect("series");
        assert_eq!((s.count, s.last_observed_time.0), (2, t2));
        let Write::Series(third) = cache.observe(&reporter(), &up, &hpa(), t2) else {
            panic!("series")
        };
        assert_eq!(third.series.map(|s| s.count), Some(3));
        // Another object with the same event: separate.
        let mut other = hpa();
        other.uid = Some("u2".into());
        assert!(matches!(
            cache.observe(&reporter(), &up, &other, t2),
            Write::Create(_)
        ));
    }

    #[test]
    fn series_expire_and_cluster_scoped_go_to_default() {
        let mut cache = Cache::default();
        let t0: Timestamp = "2024-01-01T10:00:00Z".parse().expect("time");
        let node = ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        };
        let e = ev("NodeNotReady", "Node n1 status is now: NodeNotReady");
        let Write::Create(first) = cache.observe(&reporter(), &e, &node, t0) else {
            panic!("create")
        };
        assert_eq!(first.metadata.namespace.as_deref(), Some("default"));
        let later = t0 + SERIES_TTL + SignedDuration::from_secs(1);
        let Write::Create(again) = cache.observe(&reporter(), &e, &node, later) else {
            panic!("an expired series starts over")
        };
        assert_ne!(again.metadata.name, first.metadata.name);
        assert_eq!(cache.events.len(), 1);
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = Cache::default();
        let t0: Timestamp = "2024-01-01T10:00:00Z".parse().expect("time");
        for i in 0..MAX_CACHED + 10 {
            let t = t0 + SignedDuration::from_millis(i as i64);
            cache.observe(&reporter(), &ev("Created", &format!("pod {i}")), &hpa(), t);
        }
        assert_eq!(cache.events.len(), MAX_CACHED);
        // The oldest were forgotten, the newest kept.
        let last = t0 + SignedDuration::from_millis((MAX_CACHED + 9) as i64);
        assert!(matches!(
            cache.observe(
                &reporter(),
                &ev("Created", &format!("pod {}", MAX_CACHED + 9)),
                &hpa(),
                last
            ),
            Write::Series(_)
        ));
        assert!(matches!(
            cache.observe(&reporter(), &ev("Created", "pod 0"), &hpa(), last),
            Write::Create(_)
        ));
    }
}
