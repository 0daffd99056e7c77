//! Sending coalescing pushes in group commits (ARCHITECTURE.md, `coalesce_group.rs`): each
//! push merged into the group forming behind the script in flight, and the task that sends
//! the groups. The groups' data and merging are in `coalesce_group.rs`, which holds no
//! `Buffer`, so the buffer owns the queues without an import cycle.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::buffer::Buffer;
use crate::coalesce_group::{
    Group, MergeCall, MergeOutcome, Merged, PushOps, Queue, Verdict, lock,
};
use crate::error::{Error, Result};
use crate::name::StoreName;

/// Sends `ops` (one push to `store`, made under the rules `rules`) with the store's group
/// commit; `None` when the push must be sent on its own (`Buffer::merge_alone`).
///
/// The push is merged into the last group formed behind the script in flight, by the caller's
/// task and while that script runs in Redis, so the next group is ready when it returns. A
/// new group starts when the rules differ or the last one holds `coalesce_group_entities`
/// entities.
pub(crate) async fn submit(
    buffer: &Buffer,
    store: &StoreName,
    rules: Arc<str>,
    ops: PushOps,
) -> Option<Result<Merged>> {
    let cap = buffer.config().coalesce_group_entities;
    let queue = buffer.group_commits().queue(store);
    let (reply, verdict) = oneshot::channel();
    let start = {
        let mut queue = lock(&queue);
        let joins = queue
            .forming
            .back()
            .is_some_and(|group| group.rules == rules && group.call.entities() < cap);
        if !joins {
            queue.forming.push_back(Group {
                rules,
                call: MergeCall::default(),
                members: Vec::new(),
            });
        }
        let group = queue.forming.back_mut().expect("a group was just ensured");
        group.call.merge_records(ops);
        group.members.push(reply);
        let full = group.call.entities() >= cap;
        if !std::mem::replace(&mut queue.busy, true) {
            Start::Sender
        } else if full {
            Start::Full(queue.forming.pop_back().expect("the group just joined"))
        } else {
            Start::Nothing
        }
    };
    // Tasks of their own, so a caller that stops waiting (a timeout around its push) does not
    // stop the group the others wait on.
    match start {
        Start::Sender => {
            tokio::spawn(send_groups(buffer.clone(), store.clone(), queue));
        }
        Start::Full(group) => {
            let (buffer, store) = (buffer.clone(), store.clone());
            tokio::spawn(async move { send_group(&buffer, &store, group).await });
        }
        Start::Nothing => {}
    }
    match verdict.await {
        Ok(Verdict::Done(result)) => Some(result),
        Ok(Verdict::Alone) => None,
        // The sending task was dropped (its runtime shut down) after the push joined a group:
        // the group may or may not have been applied.
        Err(_) => Some(Err(Error::Redis {
            op: "push",
            store: store.as_str().to_owned(),
            source: redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the task sending this push's group commit stopped (its runtime shut down)",
            )),
        })),
    }
}

/// What a push that joined a group starts.
enum Start {
    /// The queue was idle: a `send_groups` task, which sends the group now.
    Sender,
    /// The group is full while a script is in flight: this group is sent now, beside it.
    Full(Group),
    /// Nothing: the group waits for the script in flight.
    Nothing,
}

/// Marks the queue idle if the sending task is dropped while it runs, so later pushes start a
/// new one; the pushes waiting then learn it from their dropped replies.
struct IdleOnDrop {
    queue: Arc<Mutex<Queue>>,
    armed: bool,
}

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let mut queue = lock(&self.queue);
            queue.busy = false;
            queue.forming.clear();
        }
    }
}

/// Sends the store's groups, one script at a time, until none is waiting (a full group is
/// sent at once by the push that filled it, see `submit`).
async fn send_groups(buffer: Buffer, store: StoreName, queue: Arc<Mutex<Queue>>) {
    let mut idle = IdleOnDrop {
        queue: Arc::clone(&queue),
        armed: true,
    };
    loop {
        let group = {
            let mut queue = lock(&queue);
            let Some(group) = queue.forming.pop_front() else {
                queue.busy = false;
                idle.armed = false;
                return;
            };
            group
        };
        send_group(&buffer, &store, group).await;
    }
}

/// Sends one group as one script and answers its members.
async fn send_group(buffer: &Buffer, store: &StoreName, group: Group) {
    let Group {
        rules,
        call,
        members,
    } = group;
    let outcome = match buffer.stamp_ms().await {
        Ok(now) => buffer.run_merge_call(store, &rules, &call, now, None).await,
        Err(err) => Err(err),
    };
    let answers: Box<dyn Fn() -> Verdict + Send> = match outcome {
        Ok(MergeOutcome::Applied(merged)) => Box::new(move || Verdict::Done(Ok(merged.clone()))),
        Ok(MergeOutcome::Refused(err)) if call.answers_one_push() => {
            Box::new(move || Verdict::Done(Err(err.clone())))
        }
        Ok(MergeOutcome::Refused(_) | MergeOutcome::RulesChanged) => Box::new(|| Verdict::Alone),
        Err(err) => Box::new(move || Verdict::Done(Err(err.clone()))),
    };
    // The call's memory is given back before the members run again.
    drop(call);
    for member in members {
        // A member that stopped waiting is not told.
        let _ = member.send(answers());
    }
}
