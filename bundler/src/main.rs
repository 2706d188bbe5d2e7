mod squashfs;
mod tree;
fn main() {}
