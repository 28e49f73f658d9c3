fn main() {
    genesis_build::link_libtorch();
}
