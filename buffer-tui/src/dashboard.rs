//! The running dashboard: the terminal, the background tasks, and the loop that turns keys,
//! ticks and poll results into [`Action`]s for the [`App`] and draws it after each batch.

use std::time::Duration;

use buffer_core::Buffer;
use crossterm::event::{Event as TermEvent, EventStream, MouseEventKind};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{Access, Action, App, Running};
use crate::error::{Error, Result};
use crate::poller::{follow_events, poll_loop};
use crate::terminal::TerminalGuard;

/// How often the clock ticks: TTLs and ages count on between polls.
const TICK: Duration = Duration::from_millis(250);
/// Rows one notch of the mouse wheel moves.
const SCROLL_ROWS: isize = 3;
/// Actions applied between two draws at most, so a flood of events cannot starve drawing.
const ACTIONS_PER_DRAW: usize = 256;
/// How long quitting waits for the background tasks to drop their connections, after
/// aborting them. Short: a poll waiting on a dead or frozen master must never hold up `q`.
const STOP_GRACE: Duration = Duration::from_millis(200);

/// A dashboard ready to run.
pub(crate) struct Dashboard {
    buffer: Buffer,
    app: App,
    interval: Duration,
    /// Actions from the background tasks (and the demo's counters). Senders are cloned into
    /// the poller, the event follower and [`Dashboard::sender`]; the loop receives until it
    /// ends, and the senders' sends fail quietly after that.
    actions: (
        mpsc::UnboundedSender<Action>,
        mpsc::UnboundedReceiver<Action>,
    ),
}

impl Dashboard {
    /// A dashboard over `buffer`, polling every `interval`.
    pub(crate) fn new(buffer: Buffer, app: App, interval: Duration) -> Self {
        Self {
            buffer,
            app,
            interval,
            actions: mpsc::unbounded_channel(),
        }
    }

    /// A sender for extra actions (the demo sends its counters).
    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<Action> {
        self.actions.0.clone()
    }

    /// Takes over the terminal and runs until `q` or `shutdown`; the terminal is restored on
    /// every way out. Returns the final state.
    ///
    /// # Errors
    /// [`Error::Terminal`] when the terminal cannot be used. Redis errors are not errors here:
    /// the dashboard shows them and keeps polling.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<App> {
        let Self {
            buffer,
            mut app,
            interval,
            actions: (sender, mut receiver),
        } = self;
        let mut guard = TerminalGuard::enter().map_err(Error::Terminal)?;
        let size = guard
            .terminal()
            .size()
            .map_or((80, 24), |size| (size.width, size.height));
        sync_viewport(&mut app, size);
        app.update(Action::Tick {
            now_ms: buffer.now_ms(),
        });

        // The background tasks: they stop when `tasks` is cancelled, and are aborted at the
        // end of this function in any case. A task stops at its next await either way (each
        // one's waits are all cancellable), and nothing of theirs is awaited on the way out
        // beyond `STOP_GRACE`: quitting never waits on Redis.
        let tasks = CancellationToken::new();
        let mut running = JoinSet::new();
        let (view_sender, view) = watch::channel(app.view_request());
        running.spawn(poll_loop(
            buffer.clone(),
            interval,
            view,
            sender.clone(),
            tasks.clone(),
        ));
        running.spawn(follow_events(buffer.clone(), sender.clone(), tasks.clone()));
        // Whether this Redis user may act: the actions stay hidden until it says so.
        if app.access == Access::Unknown {
            let (buffer, sender) = (buffer.clone(), sender.clone());
            running.spawn(async move {
                let access = loop {
                    match buffer.can_operate().await {
                        Ok(true) => break Access::ReadWrite,
                        Ok(false) => {
                            break Access::ReadOnly("the Redis user lacks write rights".into());
                        }
                        // Redis away: ask again once it answers.
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                };
                let _ = sender.send(Action::Access(access));
            });
        }

        let result = event_loop(
            &mut guard,
            &mut app,
            size,
            &buffer,
            (&sender, &mut receiver),
            &view_sender,
            &shutdown,
        )
        .await;

        tasks.cancel();
        running.abort_all();
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        drop(guard);
        result.map(|()| app)
    }
}

/// Tells `app` how many table rows the layout gives it on a terminal of `size`, when that
/// changed: after a resize, and after any action that changes the chrome (the demo header, the
/// disconnected banner).
fn sync_viewport(app: &mut App, (width, height): (u16, u16)) {
    if let Some(action) = crate::layout::viewport(app, width, height) {
        app.update(action);
    }
}

async fn event_loop(
    guard: &mut TerminalGuard,
    app: &mut App,
    mut size: (u16, u16),
    buffer: &Buffer,
    (sender, receiver): (
        &mpsc::UnboundedSender<Action>,
        &mut mpsc::UnboundedReceiver<Action>,
    ),
    view_sender: &watch::Sender<crate::app::ViewRequest>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        guard
            .terminal()
            .draw(|frame| crate::ui::render(app, frame))
            .map_err(Error::Terminal)?;
        // Whether the person moved: then the poller fetches the new rows' details at once.
        let mut moved = false;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => app.update(Action::Tick { now_ms: buffer.now_ms() }),
            action = receiver.recv() => {
                let Some(action) = action else { return Ok(()) };
                app.update(action);
                for _ in 0..ACTIONS_PER_DRAW {
                    match receiver.try_recv() {
                        Ok(action) => app.update(action),
                        Err(_) => break,
                    }
                }
            }
            event = keys.next() => match event {
                Some(Ok(TermEvent::Key(key))) => {
                    if let Some(action) = crate::keys::action_for(app.mode(), &key, app.can_act()) {
                        app.update(action);
                        moved = true;
                    }
                }
                Some(Ok(TermEvent::Mouse(mouse))) => {
                    let action = match mouse.kind {
                        MouseEventKind::ScrollDown => Some(Action::Scroll(SCROLL_ROWS)),
                        MouseEventKind::ScrollUp => Some(Action::Scroll(-SCROLL_ROWS)),
                        MouseEventKind::Down(_) => {
                            crate::layout::table_row_at(app, size, mouse.column, mouse.row)
                                .map(Action::ClickRow)
                        }
                        _ => None,
                    };
                    if let Some(action) = action {
                        app.update(action);
                        moved = true;
                    }
                }
                Some(Ok(TermEvent::Resize(width, height))) => {
                    size = (width, height);
                    moved = true;
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(Error::Terminal(err)),
                None => return Ok(()),
            },
        }
        if app.running() == Running::Quit {
            return Ok(());
        }
        // Confirmed actions run beside the loop; each sends back what it did.
        for command in app.take_commands() {
            let (buffer, sender) = (buffer.clone(), sender.clone());
            tokio::spawn(async move {
                let done = match command.execute(&buffer).await {
                    Ok(text) => Action::Done {
                        text,
                        failed: false,
                    },
                    Err(err) => Action::Done {
                        text: format!("{}: {err}", command.store()),
                        failed: true,
                    },
                };
                let _ = sender.send(done);
            });
            moved = true;
        }
        // Before the poller reads the rows on screen and before the next draw.
        sync_viewport(app, size);
        // The poller always reads the latest request; it is woken early only when the person
        // moved or rows on screen have no details yet, so stores that come and go under a
        // busy load do not make it poll faster than its interval.
        let request = app.view_request();
        let urgent = moved || app.needs_details();
        view_sender.send_if_modified(|current| {
            if *current == request {
                false
            } else {
                *current = request;
                urgent
            }
        });
    }
}
