//! The little a runtime must provide: spawn a task, connect, accept. Each
//! backend (tokio, smol) is a thin adapter; everything else is written once over
//! `futures::io` traits and `futures-timer`, so behaviour is the same under both.

use std::io;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::io::{AsyncRead, AsyncWrite};

/// A connected byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed connected stream with TCP_NODELAY set.
pub(crate) type Stream = Box<dyn Io>;

/// A listening socket.
pub(crate) trait Listener: Send + 'static {
    /// Accepts the next connection (with TCP_NODELAY set).
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>>;
}

/// Spawning and socket creation for one async runtime.
pub(crate) trait Runtime: Send + Sync + 'static {
    /// Runs `task` in the background until it finishes.
    fn spawn(&self, task: BoxFuture<'static, ()>);
    /// Opens a connection to `address`.
    fn connect(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Stream>>;
    /// Adopts a bound std listener.
    fn listener(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>>;
}

#[cfg(feature = "tokio")]
pub(crate) mod tokio_runtime {
    //! The tokio backend: `tokio::net` sockets seen through `tokio-util`'s futures-io compat layer.

    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;

    pub(crate) struct TokioRuntime {
        pub(crate) handle: tokio::runtime::Handle,
    }

    struct TokioListener(tokio::net::TcpListener);

    impl Listener for TokioListener {
        fn accept(&mut self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
            Box::pin(async move {
                let (stream, address) = self.0.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Box::new(stream.compat()) as Stream, address))
            })
        }
    }

    impl Runtime for TokioRuntime {
        fn spawn(&self, task: BoxFuture<'static, ()>) {
            drop(self.handle.spawn(task));
        }

        fn connect(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Stream>> {
            Box::pin(async move {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream.compat()) as Stream)
            })
        }

        fn listener(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
            listener.set_nonblocking(true)?;
            let _context = self.handle.enter();
            Ok(Box::new(TokioListener(tokio::net::TcpListener::from_std(listener)?)))
        }
    }
}

#[cfg(feature = "smol")]
pub(crate) mod smol_runtime {
    //! The smol backend: `async-io` sockets, tasks on smol's global executor.

    use super::*;

    pub(crate) struct SmolRuntime;

    struct SmolListener(smol::Async<std::net::TcpListener>);

    impl Listener for SmolListener {
        fn accept(&mut self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
            Box::pin(async move {
                let (stream, address) = self.0.accept().await?;
                stream.get_ref().set_nodelay(true)?;
                Ok((Box::new(stream) as Stream, address))
            })
        }
    }

    impl Runtime for SmolRuntime {
        fn spawn(&self, task: BoxFuture<'static, ()>) {
            smol::spawn(task).detach();
        }

        fn connect(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Stream>> {
            Box::pin(async move {
                let stream = smol::Async::<std::net::TcpStream>::connect(address).await?;
                stream.get_ref().set_nodelay(true)?;
                Ok(Box::new(stream) as Stream)
            })
        }

        fn listener(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
            Ok(Box::new(SmolListener(smol::Async::new(listener)?)))
        }
    }
}
