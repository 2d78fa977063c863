//! Porthole's gRPC contracts, generated from `proto/**/*.proto` at build time.
//!
//! Services depend on this crate for both the server traits and the clients;
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

pub mod codec;

pub mod console {
    pub mod v1 {
        tonic::include_proto!("porthole.console.v1");

        /// Every console, following ListConsoles' pages (of `page_size`; 0:
        /// the service's default) to the end.
        pub async fn list_all(
            client: &mut console_service_client::ConsoleServiceClient<tonic::transport::Channel>,
            page_size: u32,
        ) -> Result<Vec<Console>, tonic::Status> {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_consoles(ListConsolesRequest {
                        page_size,
                        page_token: page_token.clone(),
                    })
                    .await?
                    .into_inner();
                all.extend(page.consoles);
                if page.next_page_token.is_empty() {
                    return Ok(all);
                }
                if page.next_page_token == page_token {
                    return Err(tonic::Status::internal(
                        "ListConsoles answered the same page token again",
                    ));
                }
                page_token = page.next_page_token;
            }
        }
    }
}

pub mod deploy {
    pub mod v1 {
        tonic::include_proto!("porthole.deploy.v1");
    }
}

pub mod inspect {
    pub mod v1 {
        tonic::include_proto!("porthole.inspect.v1");
    }
}

/// The encoded `FileDescriptorSet` of every contract in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/porthole_descriptor.bin"));
